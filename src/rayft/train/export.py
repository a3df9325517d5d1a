"""`rayft export`: merge a run's LoRA adapter into its base model -> a plain HF model dir.

The output loads with ``AutoModelForCausalLM.from_pretrained(dir)`` and needs neither
peft nor rayft. Written to a temp directory and renamed into place, so a killed export
never leaves half a model. Full fine-tunes are copied (they are already whole models).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from pydantic import ValidationInfo, model_validator

from ..config import ConfigError, LocalPath, Section, complete, opt


class ExportConfig(Section):
    run: str = opt("", "run directory written by `rayft train` (holds adapter/ or model/, state.json "
                   "in checkpoints/)")
    output: LocalPath = opt("", "output model directory (default: <run>/merged)")
    prompt: str = opt("", "optional: generate an answer to this prompt with the exported model")
    max_new_tokens: int = opt(32, "tokens to generate for the prompt", ge=1)

    @model_validator(mode="after")
    def _required(self, info: ValidationInfo):
        if complete(info) and not self.run:
            raise ConfigError("run is required: the run directory printed by `rayft train`")
        return self


def _run_meta(run_dir: Path) -> dict:
    rep = run_dir / "report.json"
    if not rep.exists():
        raise ConfigError(f"{run_dir}: no report.json; is this a finished `rayft train` run directory?")
    return json.loads(rep.read_text())


def export_merged(run_dir: Path, out: Path) -> Path:
    import torch  # noqa: F401  (transformers needs it loaded)

    from ..models.load import load_model, load_tokenizer, resolve_source

    meta = _run_meta(run_dir)
    cfg = meta["config"]
    tok = load_tokenizer(str(run_dir / "tokenizer"))
    if (run_dir / "adapter").exists():
        from peft import PeftModel
        source = resolve_source(cfg["model"]["name"])
        quant = cfg["model"].get("quantize", "none")
        if quant in ("int8", "nf4"):  # the base the adapter was trained against, dequantized to fp32
            from .lowbit import dequantized_base
            base = dequantized_base(load_model(source, tok, "bfloat16", cfg["model"]["trust_remote_code"],
                                               cfg["run"]["seed"]), quant)
        else:
            base = load_model(source, tok, "float32", cfg["model"]["trust_remote_code"], cfg["run"]["seed"])
        model = PeftModel.from_pretrained(base, str(run_dir / "adapter")).merge_and_unload()
    elif (run_dir / "model").exists():
        model = load_model(str(run_dir / "model"), tok, "float32")
    else:
        raise ConfigError(f"{run_dir}: neither adapter/ nor model/ found")
    return save_model_dir(model, tok, out)


def save_model_dir(model, tok, out: Path) -> Path:
    """``model`` (safetensors) + ``tok`` as a HF model directory at ``out``, written to a temp
    directory and renamed into place (also used by serve's GGUF conversion)."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    old = out.with_name(out.name + ".old")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def generate(model_dir: Path, prompt: str, max_new_tokens: int) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..data.tokenize import prompt_text

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), use_safetensors=True).eval()
    enc = tok(prompt_text(tok, "", "", prompt), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id or tok.eos_token_id)
    return tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def run_export(cfg: ExportConfig) -> str:
    import sys

    run_dir = Path(os.path.expanduser(cfg.run))
    out = Path(os.path.expanduser(cfg.output)) if cfg.output else run_dir / "merged"
    export_merged(run_dir, out)
    if cfg.prompt:
        print(f"[rayft] answer: {generate(out, cfg.prompt, cfg.max_new_tokens)}", file=sys.stderr)
    return str(out)
