"""`rayft sweep` on the session Ray (2 CPUs): real Tune trials running the `rayft train` loop
(tiny Qwen2, 1 worker x 0.5 CPU each). ASHA, outputs, hand-off to eval, interrupt + resume."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rayft.cli import main

pytestmark = [pytest.mark.ray, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "src/rayft/assets/samples/subtitle_pairs.jsonl"


def write_sweep(tmp_path: Path, name: str, train: str, space: str, scheduler: str, sweep: str = "") -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"""
sweep: {{dir: {tmp_path / 'sweeps'}, name: {name}, search: random, num_samples: 1, trial_memory_gb: 0.5{sweep}}}
scheduler: {scheduler}
base:
  recipe: {REPO / 'configs/tiny.yaml'}
  overrides:
    data: {{path: {SAMPLES}}}
    train: {{{train}}}
    scaling: {{num_workers: 1, cpus_per_worker: 0.5}}
    generate: {{prompt: ""}}
space:
{space}
""")
    return p


def run_cli(capsys, *args) -> tuple[int, str, str]:
    rc = main(["sweep", "--config", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.timeout(600)
def test_asha_sweep_results_best_trial_and_plot(ray_session, tmp_path, capsys):
    # lr 1e-7 barely moves the loss: ASHA must stop it at its first rung, while lr 3e-3
    # (best at every rung, as higher lr learns faster here) runs all 8 steps.
    cfg = write_sweep(tmp_path, "asha", "max_steps: 8, eval_every: 2, log_every: 2, checkpoint_every: 4, warmup_steps: 0",
                      "  train.lr: {grid: [0.003, 0.001, 0.0003, 1.0e-7]}",
                      "{kind: asha, grace_period: 2, reduction_factor: 2}")
    rc, out, err = run_cli(capsys, cfg)
    assert rc == 0, err[-3000:]
    # the console is rayft's (issue 21): a line per ended trial; Tune's status table only with --verbose
    progress = [ln for ln in err.splitlines() if ln.startswith("[rayft] sweep ") and " trials done" in ln]
    assert len(progress) >= 4 and progress[-1].startswith("[rayft] sweep 4/4 trials done, 0 running | best val loss"), \
        progress
    assert "Trial status" not in err + out and "Current time:" not in err + out
    sweep = tmp_path / "sweeps/asha"
    res = json.loads((sweep / "results.json").read_text())
    rows = {r["param:train.lr"]: r for r in res["trials"]}
    assert len(rows) == 4 and res["concurrency"] == 3  # 3 x (0.1 driver + 0.5 worker) on 2 CPUs
    assert rows[1e-7]["status"] == "stopped" and rows[1e-7]["steps"] < 8, rows[1e-7]
    assert rows[0.003]["status"] == "finished" and rows[0.003]["steps"] == 8
    assert _max_overlap(sweep / "trials") <= 3  # the limit held: a 4th trial started only after one ended
    assert res["placement_groups_reaped"] >= 1  # the stopped trials' workers' CPUs were freed ...
    deadline = time.time() + 60  # ... so the cluster is whole again (nothing leaked to later tests)
    while ray_session.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(1)
    assert ray_session.available_resources().get("CPU", 0) == 2
    assert res["best"] == rows[0.003]["trial_id"]
    best = json.loads((sweep / "best.json").read_text())
    run_dir = Path(best["run_dir"])
    assert out.strip().splitlines()[-1] == str(run_dir)  # last line: the eval candidate
    # each trial: its own `rayft train` run dir, named by its trial id (no timestamps)
    assert sorted(p.name for p in (sweep / "trials").iterdir()) == sorted(r["trial_id"] for r in rows.values())
    assert sorted(p.name for p in (sweep / "tune").iterdir() if p.is_dir()) == sorted(rows[k]["trial_id"] for k in rows)
    assert run_dir.parent == sweep / "trials" and best["params"] == {"train.lr": 0.003}
    rep = json.loads((run_dir / "report.json").read_text())
    assert rep["finished"] and rep["steps"] == 8 and rep["config"]["train"]["lr"] == 0.003
    assert rep["val_loss"] == pytest.approx(best["val_loss"])
    assert Path(best["checkpoint"]).name == "step_0000008"
    assert (sweep / "best_config.yaml").read_text() == (run_dir / "config.yaml").read_text()
    csv = (sweep / "results.csv").read_text().splitlines()
    assert len(csv) == 5 and "status" in csv[0]
    assert (sweep / "sweep.png").stat().st_size > 10_000
    # the stopped trial has a partial val curve, the finished one the full curve from step 0
    curve = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in curve if m.get("val_loss") is not None] == [0, 2, 4, 6, 8]
    # handed straight to `rayft eval`: its loader accepts the run dir and the adapter loads
    from rayft.models.spec import load_spec, run_spec
    model, tok = load_spec(run_spec(run_dir))
    assert model is not None and tok is not None


@pytest.mark.timeout(600)
def test_interrupted_sweep_resumes_without_rerunning(ray_session, tmp_path, capsys):
    """SIGKILL the sweep driver (jobs/sweep.py on this cluster) once one trial has finished and
    the other has a checkpoint; rerunning the same command restores the Tune experiment."""
    cfg = write_sweep(tmp_path, "resume", "eval_every: 4, log_every: 4, checkpoint_every: 4",
                      "  train.max_steps: {grid: [4, 40]}", "{kind: none}", ", max_concurrent: 2")
    sweep = tmp_path / "sweeps/resume"
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen([sys.executable, str(REPO / "jobs/sweep.py"), "--config", str(cfg)], cwd=tmp_path,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    before, deadline = {}, time.time() + 420
    try:
        while time.time() < deadline and proc.poll() is None and not before:
            runs = list((sweep / "trials").glob("*")) if (sweep / "trials").exists() else []
            done = [r for r in runs if (r / "report.json").exists()]
            partial = {r: _registered_steps(r) for r in runs if r not in done}
            partial = {r: s for r, s in partial.items() if s}
            if done and partial:
                proc.kill()  # like a crashed driver: no chance to save anything
                before = {"done": {r: (r / "report.json").read_bytes() for r in done},
                          "partial": {r: max(s) for r, s in partial.items()}}
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.close()
    assert before, "never saw one finished + one checkpointed trial:\n" + (tmp_path / "first.log").read_text()[-3000:]
    assert (sweep / "tune").exists()

    rc, out, err = run_cli(capsys, cfg)
    assert rc == 0, err[-3000:]
    res = json.loads((sweep / "results.json").read_text())
    assert res["resumed"] and len(res["trials"]) == 2  # same trials, none added
    assert all(r["status"] == "finished" for r in res["trials"]), res["trials"]
    assert {Path(r["run_dir"]) for r in res["trials"]} == set(before["done"]) | set(before["partial"])
    for run_dir, report in before["done"].items():  # finished before the kill: not run again
        assert (run_dir / "report.json").read_bytes() == report
    for run_dir, step in before["partial"].items():  # interrupted: continued from its checkpoint
        rep = json.loads((run_dir / "report.json").read_text())
        assert rep["finished"] and rep["resumed_from_step"] is not None and rep["resumed_from_step"] >= step, rep
        assert len(json.loads((run_dir / "trial.json").read_text())["starts"]) == 2


def _max_overlap(trials: Path) -> int:
    """Most trials alive at once: each from its start to its last metric / report."""
    spans = []
    for d in trials.iterdir():
        start = json.loads((d / "trial.json").read_text())["starts"][0]
        ends = [m["time"] for m in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]
        if (d / "report.json").exists():
            ends.append((d / "report.json").stat().st_mtime)
        spans.append((start, max(ends)))
    return max(sum(s <= t < e for s, e in spans) for t, _ in spans)


def _registered_steps(run_dir: Path) -> list[int]:
    """Checkpoint steps Ray Train has registered (only those are restored on resume)."""
    try:
        snap = json.loads((run_dir / "checkpoints/checkpoint_manager_snapshot.json").read_text())
        return [int(c["checkpoint_dir_name"].split("_")[-1]) for c in snap["checkpoint_results"]]
    except (OSError, ValueError, KeyError):
        return []


@pytest.mark.timeout(300)
def test_trial_larger_than_cluster_refused_before_any_trial(ray_session, tmp_path, capsys):
    cfg = write_sweep(tmp_path, "big", "max_steps: 8, eval_every: 2", "  train.lr: {choice: [0.001, 0.003]}",
                      "{kind: asha, grace_period: 2}")
    rc, _, err = run_cli(capsys, cfg, "base.overrides.scaling.cpus_per_worker=2")
    assert rc == 2 and "one trial needs 2.1 CPU" in err and "cluster has 2" in err, err[-2000:]
    assert not (tmp_path / "sweeps/big").exists()  # nothing started, nothing written
