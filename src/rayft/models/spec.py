"""Model specs: a plain dict naming what to load (base, adapter or full model, tokenizer), built
on the driver and rebuilt into a model inside actors. Shared by eval and serve.

A spec::

    {"label": "candidate", "base": "tiny-qwen2", "seed": 0, "trust_remote_code": False,
     "adapter": "/abs/adapter" | None, "full": "/abs/model" | None, "tokenizer": "/abs/tok" | None,
     "system_prompt": ""}

Weights load only from safetensors (``models.load`` forces ``use_safetensors``; peft reads
``adapter_model.safetensors``).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..config import ConfigError


def base_spec(name: str, seed: int = 0, trust_remote_code: bool = False, system_prompt: str = "",
              label: str = "base") -> dict:
    return {"label": label, "base": name, "seed": seed, "trust_remote_code": trust_remote_code,
            "adapter": None, "full": None, "tokenizer": None, "system_prompt": system_prompt}


def run_spec(run_dir: str | Path, label: str = "candidate") -> dict:
    """Spec of a finished ``rayft train`` run directory."""
    run = Path(run_dir).expanduser().resolve()
    rep = run / "report.json"
    if not rep.exists():
        raise ConfigError(f"{run}: no report.json; is this a finished `rayft train` run directory?")
    try:
        report = json.loads(rep.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ConfigError(f"{rep}: corrupt report.json: expected the JSON object `rayft train` writes "
                          f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    cfg = report.get("config") if isinstance(report, dict) else None
    if not isinstance(cfg or {}, dict) or not isinstance((cfg or {}).get("model", {}), dict):
        raise ConfigError(f"{rep}: expected a JSON object with a 'config' object (the report `rayft train` writes)")
    cfg = cfg or {}
    m = cfg.get("model", {})
    spec = base_spec(m.get("name", ""), cfg.get("run", {}).get("seed", 0), m.get("trust_remote_code", False),
                     cfg.get("data", {}).get("system_prompt", ""), label)
    if (run / "adapter").is_dir():
        spec["adapter"] = str(run / "adapter")
    elif (run / "model").is_dir():
        spec["full"] = str(run / "model")
    else:
        raise ConfigError(f"{run}: neither adapter/ nor model/ found")
    if (run / "tokenizer").is_dir():
        spec["tokenizer"] = str(run / "tokenizer")
    return spec


def manifest_spec(manifest: dict, local_dir: Path, label: str, trust_remote_code: bool = False) -> dict:
    """Spec of a registry version whose verified artifacts are in ``local_dir``.

    A manifest never turns remote code on (its ``base_model.trust_remote_code`` is ignored);
    only the caller's own config can, through ``trust_remote_code``."""
    b = manifest["base_model"]
    spec = base_spec(b["name"], b.get("seed", 0), bool(trust_remote_code),
                     manifest.get("system_prompt", ""), label)
    if manifest["kind"] == "lora":
        spec["adapter"] = str(local_dir / "adapter")
    else:
        spec["full"] = str(local_dir / "model")
    if (local_dir / "tokenizer").is_dir():
        spec["tokenizer"] = str(local_dir / "tokenizer")
    return spec


def load_tokenizer_for(spec: dict):
    from .load import load_tokenizer, resolve_source
    tok = load_tokenizer(spec["tokenizer"] or resolve_source(spec["base"]), spec["trust_remote_code"])
    tok.padding_side = "right"
    return tok


def load_base(spec: dict, tok, dtype: str = "float32", device: str = "cpu"):
    """The spec's base model in ``dtype`` on ``device``, eval mode (random-init presets rebuilt from the seed)."""
    from .load import load_model, resolve_source
    model = load_model(resolve_source(spec["base"]), tok, dtype, spec["trust_remote_code"], spec["seed"]).eval()
    return model if device == "cpu" else model.to(device)


def load_spec(spec: dict, dtype: str = "float32", device: str = "cpu"):
    """(model, tokenizer) ready for inference (CPU float32 unless told otherwise)."""
    from .load import load_model

    tok = load_tokenizer_for(spec)
    if spec["full"]:
        model = load_model(spec["full"], tok, dtype).eval()
        return (model if device == "cpu" else model.to(device)), tok
    model = load_base(spec, tok, dtype, device)
    if spec["adapter"]:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, spec["adapter"]).eval()
    return model, tok
