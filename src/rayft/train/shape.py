"""ModelShape from a model's config, on the meta device: parameter counts without weights."""
from __future__ import annotations

from .config import TrainConfig
from .memory import ModelShape


def hf_config(source: str, trust_remote_code: bool = False):
    """The transformers config of a preset, local directory or hub id (no weights read)."""
    from transformers import AutoConfig

    from ..models.load import TINY, is_tiny, load_tokenizer

    if is_tiny(source):
        model_type, kw = TINY[source]
        return AutoConfig.for_model(model_type, vocab_size=len(load_tokenizer(source)), **kw)
    return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)


def _lora_match(name: str, targets: list[str]) -> bool:
    if targets == ["all-linear"]:
        return not name.endswith("lm_head")
    return any(name == t or name.endswith("." + t) for t in targets)


def shape_from_hf_config(hf_cfg, lora_targets: list[str] | None = None, lora_r: int = 8) -> ModelShape:
    """Count parameters by building the model on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_cfg)
    params = list(model.parameters())  # tied weights appear once
    layers = int(getattr(hf_cfg, "num_hidden_layers", 1))
    layer_params = 0
    for mod in model.modules():  # the decoder stack: the ModuleList with one entry per layer
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == layers:
            layer_params = sum(p.numel() for p in mod[0].parameters())
            break
    emb = {id(m.weight): m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings())
           if m is not None}
    other = [p for p in params if id(p) not in emb]
    lora = 0
    if lora_targets:
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and _lora_match(name, lora_targets):
                lora += lora_r * (mod.in_features + mod.out_features)
    hidden = int(hf_cfg.hidden_size)
    return ModelShape(
        n_params=sum(p.numel() for p in params), largest_param=max(p.numel() for p in params),
        layer_params=layer_params, vocab=int(hf_cfg.vocab_size), hidden=hidden,
        intermediate=int(getattr(hf_cfg, "intermediate_size", 4 * hidden)), layers=layers,
        heads=int(getattr(hf_cfg, "num_attention_heads", 1)), lora_params=lora,
        embed_params=sum(p.numel() for p in emb.values()),
        largest_non_embed=max((p.numel() for p in other), default=0))


def model_shape(cfg: TrainConfig, source: str) -> ModelShape:
    """The shape of ``cfg.model`` as the workers will build it (LoRA counted from cfg.lora)."""
    return shape_from_hf_config(hf_config(source, cfg.model.trust_remote_code), cfg.lora.target_modules,
                                cfg.lora.r)
