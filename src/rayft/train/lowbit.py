"""A compact frozen base for LoRA (``model.quantize``): the base model's weights are frozen,
so they need not be stored in fp32.

``bf16-storage``: every ``nn.Linear`` and ``nn.Embedding`` weight of the base (the tied
embedding / lm_head included) is stored in bfloat16 - half the bytes - and computed in the
activations' dtype (fp32 on CPU): a linear layer casts its weight to fp32 for the matmul and
keeps only the bf16 weight for backward (``_StoredLinear``: autograd would otherwise hold an
fp32 copy of every weight until the backward pass, and nothing would be saved at the peak);
an embedding looks up bf16 rows and returns fp32. Norms, biases and the LoRA weights stay
fp32, and the LoRA weights are the only ones trained. Applied before peft wraps the model, so
peft's LoRA layers see an ordinary ``nn.Linear`` base layer (adapters kept fp32 by peft's
``autocast_adapter_dtype``). The adapter is trained against the bf16-rounded base; `rayft
export` merges it into the full-precision base (as QLoRA adapters are merged).

``int8`` / ``nf4``: every ``nn.Linear`` of the base except the output embedding (lm_head) is
replaced by bitsandbytes' own layer (``bnb.nn.Linear8bitLt``, LLM.int8 with per-row scales and
``threshold=0``; ``bnb.nn.Linear4bit`` with ``quant_type="nf4"`` and double-quantized block
scales, QLoRA's format), quantized by bitsandbytes on its CPU backend (no quantizer here); the
embedding / tied lm_head take the ``bf16-storage`` path above. The model is flagged
``is_loaded_in_8bit`` / ``is_loaded_in_4bit`` as transformers flags a bnb-loaded model, so peft
dispatches its own bnb LoRA layers (peft/tuners/lora/bnb.py). Chosen by measurement (CPU,
Qwen2 h512 x 4 layers, LoRA r8 on q/k/v/o, 4 x 128 tokens, loaded machine; fp32 1.14-1.29 s/step):
bitsandbytes 0.50 int8 1.74 s / nf4 1.73 s (0.25x / 0.13x the fp32 linear bytes); torchao 0.18
int8 1.50 s but its nf4 (NF4Tensor, no peft layer) 2.73 s and peft's torchao layer refuses 4-bit;
optimum-quanto 0.2.7 int8 1.08 s but no nf4 (qint4 JIT-builds C++ kernels, >5 min). Only
bitsandbytes covers both modes on CPU with peft's maintained integration. Export merges the adapter
into ``dequantized_base`` - the exact base the adapter was trained against, stored fp32.

A pretrained base is quantized while it loads: transformers' ``from_pretrained`` with
``bnb_config(mode)`` (its bitsandbytes integration, which works on the CPU backend) puts the
same bitsandbytes layers in place before any weight is read and quantizes each weight as it
arrives, so no whole bf16 copy of the base exists, read through safetensors' ``pread`` backend so the
checkpoint's file pages are not mapped into the process either (``load_quantized``; a
random-init base: ``random_quantized``, layer by layer). The result is bit-equal to ``store_base_compact`` on the bf16-loaded base.
"""
from __future__ import annotations

import torch

QUANTIZE = ("none", "int8", "nf4", "bf16-storage")
BNB_MODES = ("int8", "nf4")
#: resident bytes per quantized (non-embedding) base parameter, scales included (memory.estimate):
#: int8 = 1 byte + one fp32 scale per output row; nf4 = 4 bits + an 8-bit absmax per 64-block whose
#: fp32 second-level scales cover 256 blocks (bitsandbytes' double quantization). Measured on
#: the tiny model by tests/test_lowbit.py.
BASE_BYTES = {"int8": 1.01, "nf4": 0.52}


class _FrozenLinearFn(torch.autograd.Function):
    """y = x W^T + b with a frozen W stored in a low-precision dtype; only W (compact) is saved
    for backward (gradients for x, and for b when it is trained)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return torch.nn.functional.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        gx = grad @ weight.to(grad.dtype) if ctx.needs_input_grad[0] else None
        gb = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.needs_input_grad[2] else None
        return gx, None, gb


class _StoredLinear(torch.nn.Linear):
    """An ``nn.Linear`` whose frozen weight is stored compactly (trainable: plain Linear)."""

    def forward(self, x):
        if self.weight.requires_grad:
            return torch.nn.functional.linear(x, self.weight.to(x.dtype),
                                              None if self.bias is None else self.bias.to(x.dtype))
        return _FrozenLinearFn.apply(x, self.weight, self.bias)


def _embedding_to_fp32(module, args, output):
    return output.float() if output.dtype != torch.float32 else output


def store_base_compact(model: torch.nn.Module, mode: str, compute_dtype=torch.float32) -> torch.nn.Module:
    """Convert the base ``model`` (loaded in any float dtype; build.py loads it in bf16 so no
    fp32 copy ever exists) in place for ``model.quantize=mode``; returns it. Every other
    parameter (norms, biases) is cast to ``compute_dtype``."""
    if mode == "none":
        return model
    if mode in BNB_MODES:
        _bnb_linears(model, mode, compute_dtype)  # no-op on a base bitsandbytes already loaded (bnb_config)
        import bitsandbytes as bnb
        for m in model.modules():  # frozen like every other base weight (a loaded bias is trainable)
            if isinstance(m, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)) and m.bias is not None:
                m.bias.requires_grad_(False)
    elif mode != "bf16-storage":
        raise ValueError(f"model.quantize: expected one of {', '.join(QUANTIZE)}, got {mode!r}")
    seen: set[int] = set()
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            m.__class__ = _StoredLinear if type(m) is torch.nn.Linear else m.__class__
        elif isinstance(m, torch.nn.Embedding):
            m.register_forward_hook(_embedding_to_fp32)
        else:
            continue
        if type(m) is torch.nn.Embedding or isinstance(m, _StoredLinear):
            w = m.weight
            if id(w) not in seen:  # a tied weight is one parameter: converted once
                seen.add(id(w))
                w.data = w.data.to(torch.bfloat16)
            w.requires_grad_(False)
    for p in model.parameters():
        if id(p) not in seen and p.is_floating_point() and p.dtype != compute_dtype:
            p.data = p.data.to(compute_dtype)
    return model


def bnb_config(mode: str, compute_dtype=torch.float32):
    """transformers' ``BitsAndBytesConfig`` for a pretrained base loaded with ``model.quantize=mode``:
    ``from_pretrained`` then replaces the same linears as ``_bnb_linears`` (every one but the
    output embedding) by the same bitsandbytes layers, and quantizes each weight as it is read
    from the safetensors file, so the whole base never exists in bf16 (measured: benchmarks/
    RESULTS.md, "Quantized frozen base"). Same settings as ``_bnb_linears``: int8 with
    ``threshold=0`` and no fp16 weights, nf4 double-quantized; the quantized weights are
    bit-equal to ``store_base_compact`` on the bf16-loaded base (tests/test_lowbit.py)."""
    from transformers import BitsAndBytesConfig

    if mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=0.0, llm_int8_has_fp16_weight=False)
    if mode == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    raise ValueError(f"bnb_config: expected one of {', '.join(BNB_MODES)}, got {mode!r}")


def load_quantized(source: str, mode: str, compute_dtype=torch.float32, trust_remote_code: bool = False):
    """A pretrained base (local safetensors directory or hub id) loaded with ``model.quantize=mode``:
    transformers' ``from_pretrained`` with ``bnb_config(mode)`` quantizes each weight as it is
    read. For a local directory the weights are handed to it as lazy safetensors slices opened with
    safetensors' ``pread`` backend (``from_pretrained(None, config=..., state_dict=...)``, the same
    loading code as for a path): transformers' own loader memory-maps the files, and every page it
    reads stays in the process's RSS until the last tensor is loaded - the whole bf16 base again,
    as file-backed pages (measured on Qwen2.5-1.5B nf4: 4.36 GB peak RSS, 2.84 GB of it the
    mapped files; 2.33 GB with pread, benchmarks/RESULTS.md). Hub ids and remote-code models take
    transformers' mmap path (still quantized per tensor)."""
    import json
    from pathlib import Path

    from ..models.load import load_model

    d = Path(source)
    idx, single = d / "model.safetensors.index.json", d / "model.safetensors"
    if trust_remote_code or not (idx.exists() or single.exists()):
        return load_model(source, None, "bfloat16", trust_remote_code,
                          quantization_config=bnb_config(mode, compute_dtype))
    from safetensors import safe_open
    from transformers import AutoConfig, GenerationConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    files = sorted(set(json.loads(idx.read_text())["weight_map"].values())) if idx.exists() else [single.name]
    config = AutoConfig.from_pretrained(d)
    try:  # safetensors >= 0.8 reads with pread; older versions only map the file (the old peak, still correct)
        handles = [safe_open(str(d / f), framework="pt", device="cpu", backend="pread") for f in files]
    except TypeError:
        handles = [safe_open(str(d / f), framework="pt", device="cpu") for f in files]
    try:
        lazy = {k: h.get_slice(k) for h in handles for k in h.keys()}
        model = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)].from_pretrained(
            None, config=config, state_dict=lazy, dtype=torch.bfloat16,
            quantization_config=bnb_config(mode, compute_dtype))
    finally:
        for h in handles:
            h.__exit__(None, None, None)
    if (d / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(d)
    return model


def _bnb_linears(model: torch.nn.Module, mode: str, compute_dtype, flag_on: torch.nn.Module | None = None) -> None:
    """Replace every plain ``nn.Linear`` but the output embedding by its bitsandbytes layer
    (quantized now, on the weight's device, by bitsandbytes); frees the float weights."""
    import bitsandbytes as bnb

    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for name, lin in list(model.named_modules()):
        if type(lin) is not torch.nn.Linear or lin is out_emb:
            continue
        w, has_bias = lin.weight.data, lin.bias is not None
        if mode == "int8":
            new = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, has_bias, has_fp16_weights=False,
                                      threshold=0.0, device="meta")
            new.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
        else:
            new = bnb.nn.Linear4bit(lin.in_features, lin.out_features, has_bias, compute_dtype=compute_dtype,
                                    quant_type="nf4", device="meta")
            new.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4", module=new)
        if has_bias:
            new.bias = torch.nn.Parameter(lin.bias.data.to(compute_dtype), requires_grad=False)
        new = new.to(w.device).train(lin.training)  # bitsandbytes quantizes on the move to a device
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
        del lin, w
    # as transformers flags a model loaded with BitsAndBytesConfig: peft then wraps these layers
    # with its bnb LoRA layers (peft/tuners/lora/bnb.py)
    setattr(flag_on or model, "is_loaded_in_8bit" if mode == "int8" else "is_loaded_in_4bit", True)


def random_quantized(hf_cfg, mode: str, compute_dtype, seed: int) -> torch.nn.Module:
    """``model.init=random`` with an int8 / nf4 base, built without the whole base ever existing
    in bf16: the model is built with no decoder layers, then each layer is built (bf16), given
    transformers' initialisation and quantized by bitsandbytes before the next one - the peak is
    the embeddings plus one bf16 layer, not 2 bytes x every parameter (what lets a 1.5B base fit
    one 4 GB worker). Seeded: every worker builds the same weights."""
    import copy

    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        probe = AutoModelForCausalLM.from_config(hf_cfg)
    layers = getattr(probe.base_model, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or not len(layers):
        raise ValueError(f"model.quantize={mode} with model.init=random: no decoder ModuleList "
                         f"`layers` in {type(probe).__name__}")
    layer_cls, n = type(layers[0]), len(layers)
    empty = copy.deepcopy(hf_cfg)
    empty.num_hidden_layers = 0
    if getattr(empty, "layer_types", None) is not None:
        empty.layer_types = []
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(empty, dtype=torch.bfloat16)
    for m in model.modules():
        if getattr(m, "config", None) is empty:
            m.config = hf_cfg
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        for i in range(n):
            layer = layer_cls(hf_cfg, layer_idx=i)
            for m in layer.modules():
                model._init_weights(m)
            _bnb_linears(layer, mode, compute_dtype, flag_on=model)
            model.base_model.layers.append(layer)
    finally:
        torch.set_default_dtype(prev)
    return model


def quantized_param_names(model: torch.nn.Module) -> list[str]:
    """Names of the bitsandbytes-quantized parameters (frozen; DDP need not broadcast them: every
    worker quantizes the same seeded/loaded base identically)."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return []
    return [n for n, p in model.named_parameters() if isinstance(p, (bnb.nn.Int8Params, bnb.nn.Params4bit))]


def dequantize_linear(module: torch.nn.Module, dtype=torch.float32) -> torch.Tensor:
    """The float weight a bitsandbytes layer computes with (bitsandbytes' own dequantizers)."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    w = module.weight
    if isinstance(w, bnb.nn.Params4bit):
        return F.dequantize_4bit(w.data, w.quant_state).to(dtype)
    return F.int8_vectorwise_dequant(w.data, w.SCB).to(dtype)


def dequantized_base(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """The base a ``model.quantize=mode`` adapter was trained against, in fp32 ``nn.Linear`` /
    ``nn.Embedding`` (what `rayft export` merges into): ``model`` - loaded in bf16 exactly as the
    workers load it - is quantized by bitsandbytes and dequantized back; for bf16-storage the
    bf16-rounded weights. Returns a plain HF model, every parameter fp32."""
    if mode in BNB_MODES:
        import bitsandbytes as bnb

        _bnb_linears(model, mode, torch.float32)
        for name, mod in list(model.named_modules()):
            if isinstance(mod, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)):
                lin = torch.nn.Linear(mod.in_features, mod.out_features, mod.bias is not None, device="meta")
                lin.weight = torch.nn.Parameter(dequantize_linear(mod), requires_grad=False)
                if mod.bias is not None:
                    lin.bias = torch.nn.Parameter(mod.bias.data.float(), requires_grad=False)
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child, lin)
        for flag in ("is_loaded_in_8bit", "is_loaded_in_4bit"):
            if flag in vars(model):
                delattr(model, flag)
    return model.float()
