"""The training-time guard inside a real Ray Train run (W5): a NaN loss rolls back to the last
healthy checkpoint with half the learning rate and the run still finishes; when rollbacks
run out the run stops with a clear error and a report. NaNs come from the documented fault
injection key guard.inject_nan_at, which poisons the weights and the loss of that step."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rayft.cli import main

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "src/rayft/assets/samples/subtitle_pairs.jsonl"


def _train(runs: Path, name: str, *overrides: str) -> int:
    return main(["train", "--config", str(REPO / "configs/tiny.yaml"), f"run.dir={runs}", f"run.name={name}",
                 f"data.path={SAMPLES}", "generate.prompt=", "train.max_steps=12", "train.checkpoint_every=5",
                 "train.log_every=1", *overrides])


def test_nan_rolls_back_to_healthy_checkpoint_and_halves_lr(ray_session, tmp_path):
    # step 3: no checkpoint yet -> back to the initial weights; step 8: back to checkpoint 5
    assert _train(tmp_path, "guarded", "guard.inject_nan_at=[3,8]") == 0
    run = tmp_path / "guarded"
    rep = json.loads((run / "report.json").read_text())
    assert rep["finished"] and rep["steps"] == 12
    g = rep["guard"]
    assert g["rollbacks"] == 2 and g["lr_scale"] == 0.25 and g["stopped"] is None
    back = [(e["step"], e["rollback_to"], e["lr_scale"]) for e in g["events"]]
    assert back == [(3, 0, 0.5), (8, 5, 0.25)]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == list(range(1, 13))  # rolled-back steps were re-run, each logged once
    loss = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert all(v == v for v in loss.values())  # no NaN survived: the poisoned weights were restored
    assert rep["loss_last"] < rep["loss_first"]
    lr = {r["step"]: r["lr"] for r in rows if "lr" in r}
    def f(s: int) -> float:  # the schedule after warmup (2 steps): cosine from 1 to min_lr_ratio=0.1 at step 12
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 10))
    # the scheduler's lr after step s is lr * f(s); halved after the first rollback, quartered after the second
    assert lr[5] == pytest.approx(0.003 * 0.5 * f(5), rel=1e-6)
    assert lr[12] == pytest.approx(0.003 * 0.25 * f(12), rel=1e-6)
    state = json.loads((run / "checkpoints/step_0000012/state.json").read_text())
    assert state["guard"]["rollbacks"] == 2  # a resume keeps the count and the lower learning rate
    # the adapter published at the end is finite
    from safetensors.torch import load_file
    assert all(t.isfinite().all() for t in load_file(str(run / "adapter/adapter_model.safetensors")).values())


def test_nan_after_last_rollback_stops_with_report(ray_session, tmp_path, capsys):
    rc = _train(tmp_path, "diverged", "guard.inject_nan_at=[2]", "guard.max_rollbacks=0")
    assert rc == 2
    err = capsys.readouterr().err
    assert "train loss is nan at step 2 after 0 rollbacks" in err and "train.lr" in err
    rep = json.loads((tmp_path / "diverged/report.json").read_text())
    assert not rep["finished"] and rep["guard"]["stopped"]["event"] == "nonfinite_stop"
    assert not (tmp_path / "diverged/adapter").exists()  # nothing unhealthy was published


def test_guard_config_is_checked(capsys):
    assert main(["train", f"data.path={SAMPLES}", "guard.lr_factor=2"]) == 2
    assert "lr_factor" in capsys.readouterr().err


def test_rollback_under_deepspeed_zero2(ray_session, tmp_path):
    # step 2: back to step 0 (DeepSpeed engine rebuilt in the same workers); step 5: to checkpoint 3
    assert _train(tmp_path, "z2", "train.strategy=zero2", "train.max_steps=6", "train.checkpoint_every=3",
                  "guard.inject_nan_at=[2,5]") == 0
    rep = json.loads((tmp_path / "z2/report.json").read_text())
    assert rep["finished"] and rep["guard"]["rollbacks"] == 2 and rep["guard"]["lr_scale"] == 0.25
    assert [(e["step"], e["rollback_to"]) for e in rep["guard"]["events"]] == [(2, 0), (5, 3)]
    assert rep["loss_last"] == rep["loss_last"] and rep["loss_last"] < rep["loss_first"]
