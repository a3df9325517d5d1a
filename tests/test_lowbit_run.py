"""model.quantize=bf16-storage under Ray Train DDP (tiny Qwen2, 2 workers): the LoRA on the
bf16-stored base trains, and `rayft export` merges the adapter into a full-precision model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayft.config import load
from rayft.train.config import TrainConfig
from rayft.train.launch import run_training

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[1]


def test_bf16_storage_lora_trains_on_ray_and_exports_fp32(ray_session, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from rayft.train.export import ExportConfig, run_export

    cfg = load(TrainConfig, REPO / "configs/tiny.yaml",
               [f"run.dir={tmp_path}", "run.name=bf16", "generate.prompt=", "model.quantize=bf16-storage",
                "train.max_steps=8", "train.checkpoint_every=8", "train.eval_every=8"])
    run_dir = Path(run_training(cfg))
    rep = json.loads((run_dir / "report.json").read_text())
    assert rep["finished"] and rep["config"]["model"]["quantize"] == "bf16-storage"
    assert rep["val_loss"] < rep["val_loss_start"]
    out = Path(run_export(ExportConfig(run=str(run_dir), output=str(tmp_path / "merged"))))
    merged = AutoModelForCausalLM.from_pretrained(str(out), use_safetensors=True)
    assert {p.dtype for p in merged.parameters()} == {torch.float32}


def test_nf4_lora_ddp_resumes_and_exports_the_dequantized_merge(ray_session, tmp_path):
    """model.quantize=nf4 (bitsandbytes) on 2 Ray Train DDP workers: stopped after a checkpoint and
    resumed, the checkpoints hold the adapter only, and `rayft export`'s fp32 merge gives the
    logits of the trained adapter on the nf4 base."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from rayft.data.tokenize import collate, encode_pair
    from rayft.models.load import load_tokenizer, resolve_source
    from rayft.testing.runs import DEFAULT_PAIRS
    from rayft.train.build import base_model
    from rayft.train.checkpoint import latest_checkpoint_dir
    from rayft.train.export import ExportConfig, run_export
    from rayft.train.lowbit import store_base_compact

    over = [f"run.dir={tmp_path}", "run.name=nf4", "generate.prompt=", "model.quantize=nf4", "lora.dropout=0",
            "train.max_steps=8", "train.checkpoint_every=4", "train.eval_every=4"]
    cfg = load(TrainConfig, REPO / "configs/tiny.yaml", over + ["train.stop_after_steps=4"])
    run_dir = Path(run_training(cfg))
    ckpt = latest_checkpoint_dir(run_dir)
    sd = load_file(str(ckpt / "adapter" / "adapter_model.safetensors"))
    assert sd and all("lora_" in k for k in sd)  # the base is rebuilt from the source, never saved
    run_dir = Path(run_training(load(TrainConfig, REPO / "configs/tiny.yaml", over)))
    rep = json.loads((run_dir / "report.json").read_text())
    assert rep["finished"] and rep["resumed_from_step"] == 4 and rep["steps"] == 8
    assert rep["config"]["model"]["quantize"] == "nf4" and rep["val_loss"] < rep["val_loss_start"]

    out = Path(run_export(ExportConfig(run=str(run_dir), output=str(tmp_path / "merged"))))
    merged = AutoModelForCausalLM.from_pretrained(str(out), use_safetensors=True).eval()
    assert {p.dtype for p in merged.parameters()} == {torch.float32}
    tcfg = load(TrainConfig, REPO / "configs/tiny.yaml", over)
    src = resolve_source(tcfg.model.name)
    tok = load_tokenizer(src)
    batch = collate([encode_pair(tok, "", "", r["prompt"], r["response"], 128)[:2] for r in DEFAULT_PAIRS],
                    tok.pad_token_id)
    with torch.no_grad():  # the adapter on the nf4 base, as the workers computed it
        trained = PeftModel.from_pretrained(store_base_compact(base_model(tcfg, src, tok), "nf4"),
                                            str(run_dir / "adapter")).eval()
        want, got = trained(**batch).logits, merged(**batch).logits
    assert float((got - want).abs().max()) < 2e-3 * float(want.abs().max())
