"""Experiment tracking (issue 21 item 3): ONE tiny `rayft train` run (a CLI subprocess, its own
local Ray) with tracking=[tensorboard, mlflow, wandb], then each backend read back with its
own library:

* MLflow: a real tracking server (`mlflow server`, sqlite backend, proxied artifacts) started
  here on 127.0.0.1; the run, params, metric histories and artifacts read with MlflowClient;
* TensorBoard: the event files under <run dir>/tb/ read with tensorboard's EventAccumulator;
* W&B: offline (files under <run dir>/wandb/, nothing sent), the run's records read back with
  wandb's own datastore reader.

The run injects one NaN (guard.inject_nan_at) so a guard rollback event is tracked too.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rayft.testing.mlflow_server import mlflow_server as mlflow_server_at

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    with mlflow_server_at(tmp_path_factory.mktemp("mlflow_server")) as url:
        yield url


@pytest.fixture(scope="module")
def tracked_run(mlflow_server, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    home = tmp_path_factory.mktemp("wandb_home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))}
    env.update(WANDB_MODE="offline", WANDB_CONFIG_DIR=str(home), WANDB_CACHE_DIR=str(home),
               WANDB_DATA_DIR=str(home), RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    uri = mlflow_server
    cmd = [str(BIN / "rayft"), "train", "--config", "configs/tiny.yaml", f"run.dir={runs}", "run.name=tracked",
           "train.max_steps=4", "train.log_every=1", "train.checkpoint_every=4", "train.eval_every=2",
           "train.warmup_steps=0", "guard.inject_nan_at=[2]", "generate.prompt=",
           "tracking=[tensorboard,mlflow,wandb]", f"mlflow.uri={uri}", "mlflow.experiment=rayft-test"]
    t0 = time.time()
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=360)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    run_dir = Path(p.stdout.strip().splitlines()[-1])
    assert run_dir == runs / "tracked"
    print(f"tracked run: {time.time() - t0:.0f} s")
    return run_dir, out, mlflow_server


def test_mlflow_server_has_the_run(tracked_run):
    from mlflow.tracking import MlflowClient

    run_dir, out, url = tracked_run
    report = json.loads((run_dir / "report.json").read_text())
    client = MlflowClient(tracking_uri=url)
    exp = client.get_experiment_by_name("rayft-test")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert json.loads((run_dir / "tracking.json").read_text())["mlflow"]["run_id"] == run.info.run_id
    # params: the resolved config, flattened; the password in mlflow.uri never leaves the machine
    params = run.data.params
    assert params["train.max_steps"] == "4" and params["model.name"] == "tiny-qwen2"
    assert params["lora.target_modules"].startswith('["q_proj"')
    assert params["mlflow.uri"] == url
    # per-step metrics: every logged step (the ones before the rollback to step 0 too)
    loss = client.get_metric_history(run.info.run_id, "loss")
    assert {m.step for m in loss} == {1, 2, 3, 4}
    last = max(loss, key=lambda m: m.timestamp)
    assert last.step == 4 and last.value == pytest.approx(report["loss_last"])
    assert {m.step for m in client.get_metric_history(run.info.run_id, "val_loss")} >= {0, 2, 4}
    for key in ("lr", "tokens_per_s", "peak_rss_mb/rank0", "peak_rss_mb/rank1", "guard/nonfinite_rollback",
                "final/loss_last"):
        assert client.get_metric_history(run.info.run_id, key), key
    assert run.data.metrics["final/loss_last"] == pytest.approx(report["loss_last"])
    assert run.data.tags["rayft.adapter"] == str((run_dir / "adapter").resolve())
    # artifacts: report.json, loss.png, config.yaml and the guard event, through the server
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.json", "loss.png", "config.yaml", "events"} <= names, names
    got = json.loads(Path(client.download_artifacts(run.info.run_id, "report.json", str(run_dir.parent))).read_text())
    assert got["loss_last"] == report["loss_last"]
    events = client.list_artifacts(run.info.run_id, "events")
    assert any("guard_step" in a.path for a in events), events


def test_tensorboard_event_files(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _, _ = tracked_run
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    for key in ("loss", "lr", "tokens_per_s", "val_loss", "peak_rss_mb/rank0", "peak_rss_mb/rank1"):
        assert key in tags["scalars"], (key, tags["scalars"])
    assert {e.step for e in acc.Scalars("loss")} == {1, 2, 3, 4}
    assert 0 in {e.step for e in acc.Scalars("val_loss")}
    assert "loss" in tags["images"]                     # loss.png
    texts = set(tags["tensors"])                          # add_text -> '<tag>/text_summary'
    assert {"config/text_summary", "guard/text_summary", "report/text_summary"} <= texts, texts


def test_wandb_offline_files(tracked_run):
    from rayft.testing import wandb_offline

    run_dir, out, _ = tracked_run
    state = json.loads((run_dir / "tracking.json").read_text())["wandb"]
    assert state["mode"] == "offline"
    offline = list((run_dir / "wandb").glob(f"offline-run-*-{state['id']}"))
    assert len(offline) == 1, list((run_dir / "wandb").iterdir())
    assert not list((run_dir / "wandb").glob("run-*")), "an online run directory: something was synced"
    assert "wandb:" not in out  # W&B's own console messages are off
    f = offline[0] / f"run-{state['id']}.wandb"
    hist = wandb_offline.history(f)
    assert {h["step"] for h in hist if "loss" in h} == {1, 2, 3, 4}, hist
    assert any("val_loss" in h for h in hist) and any("peak_rss_mb/rank1" in h for h in hist)
    assert any(h.get("guard/nonfinite_rollback") == 1 for h in hist)
    assert {"train", "model", "mlflow"} <= wandb_offline.config_keys(f)
    assert {"report.json", "loss.png"} <= {p.name for p in (offline[0] / "files").iterdir()}


def test_eval_scores_and_gate_join_the_training_run(tracked_run, tmp_path, monkeypatch):
    """`rayft eval` with tracking: log_eval (what run_eval calls after writing eval.json) adds the
    scores and the gate decision to the candidate's tracked run (same MLflow run id, same W&B id)."""
    from mlflow.tracking import MlflowClient

    from rayft.config import from_dict
    from rayft.evaluate.config import EvalConfig
    from rayft.tracking import log_eval

    run_dir, _, url = tracked_run
    monkeypatch.setenv("WANDB_MODE", "offline")
    for k in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(k, str(tmp_path))
    state = json.loads((run_dir / "tracking.json").read_text())
    cfg = from_dict(EvalConfig, {"candidate": str(run_dir), "data": {"golden": "golden.jsonl"},
                                 "tracking": ["mlflow", "tensorboard", "wandb"], "mlflow": {"uri": url,
                                                                                           "experiment": "rayft-test"}})
    report = {"metrics": {"candidate": {"golden": {"loss": 1.25, "n": 3}}, "champion": {"golden": {"loss": 1.5}}},
              "accept": False, "decision": "reject", "reasons": ["FAIL golden loss: 1.25 vs 1.5 - margin"],
              "champion": "base", "registered": None}
    out = tmp_path / "eval.json"
    out.write_text(json.dumps(report))
    log_eval(cfg, run_dir, report, out)
    after = json.loads((run_dir / "tracking.json").read_text())
    assert after["mlflow"]["run_id"] == state["mlflow"]["run_id"] and after["wandb"]["id"] == state["wandb"]["id"]
    client = MlflowClient(tracking_uri=url)
    run = client.get_run(state["mlflow"]["run_id"])
    assert run.data.metrics["eval/candidate/golden/loss"] == 1.25
    assert run.data.metrics["eval/gate_accept"] == 0.0
    assert run.data.tags["rayft.gate_decision"] == "reject"
    assert any(k.startswith("eval.gate.") for k in run.data.params)  # the eval config, beside train's
    assert "eval.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    import wandb
    wandb.teardown()  # W&B's service process started by this test process
