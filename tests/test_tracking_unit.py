"""rayft.tracking without Ray (issue 21 item 3): the Tracker fed metrics.jsonl-style rows, against
a real `mlflow server` (127.0.0.1, sqlite), TensorBoard event files (read back with
EventAccumulator) and W&B offline; a resumed run continues the same tracked runs; a server that
goes away mid-run is dropped with one warning (training would go on); one that is not there
refuses the start in seconds. The full path through `rayft train` is tests/test_tracking.py."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from rayft.config import ConfigError, from_dict
from rayft.testing.mlflow_server import mlflow_server
from rayft.testing.net import free_port
from rayft.train.config import TrainConfig

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for k in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(k, str(tmp_path / "wandb_home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield
    import wandb
    wandb.teardown()


def _cfg(run_dir: Path, url: str, backends: list[str]) -> TrainConfig:
    return from_dict(TrainConfig, {"data": {"path": "pairs.jsonl"}, "run": {"dir": str(run_dir.parent),
                                                                            "name": run_dir.name},
                                   "tracking": backends, "mlflow": {"uri": url, "experiment": "unit"}})


def _rows(t0: float, steps: range, loss0: float = 2.0) -> list[dict]:
    return [{"step": s, "loss": loss0 / s, "loss_avg": loss0 / s, "lr": 1e-3, "tokens_per_s": 100.0 + s,
             "tokens": 10, "window_s": 0.1, "peak_rss_mb": [500.0 + s, 510.0 + s], "time": t0 + s} for s in steps]


def test_tracker_logs_to_all_three_and_resumes(tmp_path, wandb_env, capsys):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rayft import tracking

    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    with mlflow_server(tmp_path / "server") as url:
        cfg = _cfg(run_dir, url, ["tensorboard", "mlflow", "wandb"])
        t0 = time.time()
        tr = tracking.start(cfg, run_dir, "r1")
        tr.rows([{"step": 0, "val_loss": 3.0, "time": t0}] + _rows(t0, range(1, 4)))
        tr.rows(_rows(t0, range(1, 4)))  # seen rows are not logged twice
        tr.rows([{"event": "nonfinite_rollback", "step": 3, "message": "NaN loss at step 3", "time": t0 + 3.5}])
        (run_dir / "report.json").write_text(json.dumps({"loss_first": 2.0, "loss_last": 0.667, "steps": 3}))
        tr.finish(run_dir, ok=False)  # stopped at step 3 (resumable)
        state = json.loads((run_dir / "tracking.json").read_text())

        # the rerun resumes: same MLflow run, same W&B id; rows of the first launch are not re-logged
        tr = tracking.start(cfg, run_dir, "r1", resumed=True)
        tr.rows(_rows(t0, range(1, 6)))
        tr.finish(run_dir, ok=True)
        again = json.loads((run_dir / "tracking.json").read_text())
        assert again["mlflow"]["run_id"] == state["mlflow"]["run_id"] and again["wandb"]["id"] == state["wandb"]["id"]

        client = MlflowClient(tracking_uri=url)
        run = client.get_run(state["mlflow"]["run_id"])
        assert run.info.status == "FINISHED" and run.info.run_name == "r1"
        assert run.data.params["train.max_steps"] == "100" and run.data.params["tracking"] == '["tensorboard", ' \
            '"mlflow", "wandb"]'
        hist = client.get_metric_history(run.info.run_id, "loss")
        assert sorted(m.step for m in hist) == [1, 2, 3, 4, 5]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [0]
        assert len(client.get_metric_history(run.info.run_id, "peak_rss_mb/rank1")) == 5
        assert client.get_metric_history(run.info.run_id, "guard/nonfinite_rollback")[0].step == 3
        assert run.data.metrics["final/loss_last"] == pytest.approx(0.667)
        assert {"report.json", "events"} <= {a.path for a in client.list_artifacts(run.info.run_id)}

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    assert sorted(e.step for e in acc.Scalars("loss")) == [1, 2, 3, 4, 5]
    assert "guard/text_summary" in acc.Tags()["tensors"]
    offline = sorted((run_dir / "wandb").glob(f"offline-run-*-{state['wandb']['id']}"))
    assert len(offline) == 2 and all((d / f"run-{state['wandb']['id']}.wandb").is_file() for d in offline)
    from rayft.testing import wandb_offline
    hist = [h for d in offline for h in wandb_offline.history(d / f"run-{state['wandb']['id']}.wandb")]
    assert sorted(h["step"] for h in hist if "loss" in h) == [1, 2, 3, 4, 5]
    assert any(h.get("guard/message", "").startswith("nonfinite_rollback") for h in hist)
    assert "tracking" in wandb_offline.config_keys(offline[0] / f"run-{state['wandb']['id']}.wandb")
    out, err = capsys.readouterr()
    assert "View run" not in out and "wandb:" not in out + err  # stdout is for the run directory


def test_server_going_away_is_dropped_with_a_warning(tmp_path, capsys):
    from rayft import tracking

    run_dir = tmp_path / "runs" / "r2"
    run_dir.mkdir(parents=True)
    with mlflow_server(tmp_path / "server") as url:
        tr = tracking.start(_cfg(run_dir, url, ["mlflow", "tensorboard"]), run_dir, "r2")
    t = time.time()
    tr.rows(_rows(time.time(), range(1, 3)))   # the server is gone: mlflow dropped, tensorboard goes on
    assert time.time() - t < 120
    assert [b.name for b in tr.backends] == ["tensorboard"]
    tr.finish(run_dir, ok=True)
    err = capsys.readouterr().err
    assert err.count("[rayft] warning: tracking: mlflow failed") == 1


def test_unreachable_server_refuses_the_start(tmp_path):
    from rayft import tracking

    run_dir = tmp_path / "runs" / "r3"
    run_dir.mkdir(parents=True)
    t = time.time()
    with pytest.raises(ConfigError, match=r"tracking: cannot start mlflow"):
        tracking.start(_cfg(run_dir, f"http://127.0.0.1:{free_port()}", ["tensorboard", "mlflow"]), run_dir, "r3")
    assert time.time() - t < 90


def test_sweep_trials_are_children_of_the_sweep_run(tmp_path):
    """`rayft sweep` with tracking=[mlflow] in its recipe: one parent run for the sweep (its config as
    params), each trial's run (<sweep dir>/trials/<id>) a child of it (MLflow's parentRunId tag)."""
    from mlflow.tracking import MlflowClient

    from rayft import tracking
    from rayft.tune.config import SweepConfig

    sweep_dir = tmp_path / "sweeps" / "s1"
    trial_dir = sweep_dir / "trials" / "t_00000"
    trial_dir.mkdir(parents=True)
    with mlflow_server(tmp_path / "server") as url:
        base = _cfg(trial_dir, url, ["mlflow", "tensorboard"])
        scfg = from_dict(SweepConfig, {"space": {"train.lr": {"choice": [1e-3, 1e-2]}}})
        parent = tracking.start(base, sweep_dir, "s1", kind="sweep", params_of=scfg)
        assert [b.name for b in parent.backends] == ["mlflow"]  # no TensorBoard dir for the parent
        child = tracking.start(base, trial_dir, "t_00000")
        child.rows(_rows(time.time(), range(1, 3)))
        child.finish(trial_dir, ok=True)
        parent.finish(sweep_dir, ok=True, extra={"best_trial": "t_00000", "best_val_loss": 1.5})
        client = MlflowClient(tracking_uri=url)
        pid = json.loads((sweep_dir / "tracking.json").read_text())["mlflow"]["run_id"]
        cid = json.loads((trial_dir / "tracking.json").read_text())["mlflow"]["run_id"]
        prun, crun = client.get_run(pid), client.get_run(cid)
        assert crun.data.tags["mlflow.parentRunId"] == pid and crun.data.tags["rayft.sweep"] == "s1"
        assert prun.data.tags["rayft.stage"] == "sweep" and prun.data.params["space.train.lr.choice"] == "[0.001, 0.01]"
        assert prun.data.metrics["final/best_val_loss"] == 1.5 and prun.info.status == "FINISHED"
