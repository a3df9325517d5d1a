"""GPU-only paths, marked `gpu`: conftest skips them where torch sees no CUDA device and a
machine with one runs them with the rest of the suite (`pytest -m gpu` for these alone).
Each is the CPU test's GPU twin, so the GPU branches (DS_ACCELERATOR=cuda, NCCL, autocast
dtypes, cuda embedding actors) are exercised somewhere."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rayft.config import load

pytestmark = [pytest.mark.gpu, pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "src/rayft/assets/samples/subtitle_pairs.jsonl"


def _train(tmp_path: Path, name: str, *overrides: str) -> dict:
    from rayft.train.config import TrainConfig
    from rayft.train.launch import run_training

    cfg = load(TrainConfig, REPO / "configs/tiny.yaml",
               [f"run.dir={tmp_path}", f"run.name={name}", f"data.path={SAMPLES}", "generate.prompt=",
                "scaling.use_gpu=true", "scaling.num_workers=1", "train.max_steps=4", *overrides])
    run_dir = Path(run_training(cfg))
    return json.loads((run_dir / "report.json").read_text())


def test_lora_on_one_gpu_worker(ray_session, tmp_path):
    rep = _train(tmp_path, "gpu_lora")
    assert rep["steps"] == 4 and math.isfinite(rep["loss_last"])


def test_zero2_bf16_on_one_gpu_worker(ray_session, tmp_path):
    rep = _train(tmp_path, "gpu_zero2", "train.strategy=zero2", "model.dtype=bfloat16")
    assert rep["steps"] == 4 and math.isfinite(rep["loss_last"])


def test_frames_embed_on_cuda(ray_session, tmp_path):
    import numpy as np
    import pyarrow.parquet as pq

    from rayft.cli import STAGES
    from rayft.frames.config import FramesConfig
    from rayft.frames.run import run_embed
    from rayft.testing import frames as synth

    truth = synth.write_episodes(tmp_path / "in", n_episodes=1, frames_per_episode=8, n_characters=2,
                                 size=(96, 64), seed=0)
    cfg = load(FramesConfig, REPO / "configs/frames.yaml",
               [f"input={tmp_path / 'in'}", f"output={tmp_path / 'emb'}", "model.name=ViT-S-32", "model.pretrained=",
                "model.image_size=64", "embed.progress=false", "embed.device=cuda", "model.precision=fp16"],
               STAGES["frames embed"][3])
    out = Path(run_embed(cfg))
    df = pq.read_table(sorted((out / "embeddings").rglob("*.parquet"))).to_pandas()
    assert len(df) == len(truth)
    assert np.allclose(np.linalg.norm(np.stack(df["embedding"].to_numpy()), axis=1), 1, atol=1e-2)
