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
