"""data.packing=true end to end on the session Ray (tiny Qwen2, 2 Ray Train workers): the run
trains, reports useful (non-padding) tokens/s beside tokens/s, consumes several examples per
packed row, and a run stopped and resumed continues the exact same loss curve."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayft.config import load
from rayft.train.config import TrainConfig
from rayft.train.launch import run_training

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "src/rayft/assets/samples/subtitle_pairs.jsonl"


def cfg(run_dir: Path, name: str, *overrides: str) -> TrainConfig:
    return load(TrainConfig, REPO / "configs/tiny.yaml",
                [f"run.dir={run_dir}", f"run.name={name}", f"data.path={SAMPLES}", "generate.prompt=",
                 "data.packing=true", "data.max_seq_len=1024", "train.batch_size=2", "train.max_steps=8",
                 "train.checkpoint_every=4", "train.eval_every=4", "train.log_every=2", *overrides])


def _metrics(run_dir: Path) -> dict[int, dict]:
    return {m["step"]: m for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "event" not in m}


def test_packed_run_trains_reports_useful_tokens_and_resumes_exactly(ray_session, tmp_path):
    straight = Path(run_training(cfg(tmp_path, "straight")))
    rep = json.loads((straight / "report.json").read_text())
    assert rep["finished"] and rep["config"]["data"]["packing"] is True
    assert 0 < rep["useful_tokens_per_s"] <= rep["tokens_per_s"]
    ref = _metrics(straight)
    assert ref[8]["loss"] < ref[2]["loss"] and ref[8]["val_loss"] < ref[0]["val_loss"]
    # a packed row holds several pairs (W1 pairs: 157-368 tokens with this tokenizer; rows of 1024)
    per_step = ref[4]["examples"] / 2  # window of steps 3-4; 2 workers x 2 rows per step
    assert per_step > 2 * 2 * 2.5, ref[4]
    assert ref[4]["useful_tokens"] / ref[4]["tokens"] > 0.8

    first = Path(run_training(cfg(tmp_path, "resumed", "train.stop_after_steps=4")))
    assert json.loads((first / "report.json").read_text())["steps"] == 4
    second = Path(run_training(cfg(tmp_path, "resumed")))
    rep2 = json.loads((second / "report.json").read_text())
    assert rep2["resumed_from_step"] == 4 and rep2["steps"] == 8
    got = _metrics(second)
    assert sorted(got) == sorted(ref)
    for step in (6, 8):
        assert abs(got[step]["loss"] - ref[step]["loss"]) < 1e-4, (step, got[step]["loss"], ref[step]["loss"])
        assert got[step]["examples"] == ref[step]["examples"]
    assert abs(got[8]["val_loss"] - ref[8]["val_loss"]) < 1e-4
