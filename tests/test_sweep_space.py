"""`rayft sweep` without Ray: search-space parsing, every refusal with its reason, resources
and concurrency, resume compatibility, results table / best trial / sweep.png."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayft.cli import main
from rayft.config import ConfigError, load
from rayft.tune.config import SweepConfig
from rayft.tune.plan import check_resumable, make_plan
from rayft.tune.results import pick_best, trial_row, write_results
from rayft.tune.space import data_key, data_variants, max_concurrency, trial_config, trial_resources

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "src/rayft/assets/samples/subtitle_pairs.jsonl"


def sweep_cfg(tmp_path: Path, *overrides: str, space: str | None = None) -> SweepConfig:
    """configs/sweep.yaml with absolute paths; ``space`` replaces its search space (YAML text)."""
    text = (REPO / "configs/sweep.yaml").read_text()
    if space is not None:
        text = text[:text.index("\nspace:")] + "\n" + space
    p = tmp_path / "sweep.yaml"
    p.write_text(text)
    return load(SweepConfig, p, [f"base.recipe={REPO / 'configs/tiny.yaml'}", f"sweep.dir={tmp_path / 'sweeps'}",
                                 f"base.overrides.data.path={SAMPLES}", *overrides])


def refusal(tmp_path, *overrides, space=None) -> str:
    with pytest.raises(ConfigError) as e:
        make_plan(sweep_cfg(tmp_path, *overrides, space=space))
    return str(e.value)


def test_shipped_recipe_plans(tmp_path):
    plan = make_plan(sweep_cfg(tmp_path))
    assert {p.key: p.kind for p in plan.params} == {"train.lr": "loguniform", "lora.r": "choice",
                                                     "train.warmup_steps": "choice"}
    assert plan.search == "optuna"  # installed in the venv, no grid keys
    assert plan.max_steps == 40 and plan.base_cfg.train.eval_every == 4
    assert plan.sweep_dir == tmp_path / "sweeps" / "tiny-lr-rank"


def test_nested_and_dotted_keys_and_yaml_numbers(tmp_path):
    plan = make_plan(sweep_cfg(tmp_path, space="space:\n  train:\n    lr: {loguniform: [1e-4, 1e-2]}\n"
                                               "  lora.r: {grid: [4, 8]}\n"))
    lr = next(p for p in plan.params if p.key == "train.lr")
    assert lr.values == [1e-4, 1e-2]  # YAML reads 1e-4 as a string; coerced to the field's type
    assert plan.search == "random"  # grid keys: optuna cannot grid-search
    cfg = trial_config(plan.base, {"train.lr": 3e-3, "lora.r": 8}, dir="x", name="t1")
    assert cfg.train.lr == 3e-3 and cfg.lora.r == 8 and cfg.run.name == "t1"
    assert cfg.train.max_steps == 40  # base.overrides kept


@pytest.mark.parametrize("space,reason", [
    ("space: {}\n", "the search space is empty"),
    ("space:\n  train.lrr: {choice: [1, 2]}\n", "'train.lrr' is not a train config key (did you mean train.lr?)"),
    ("space:\n  train.lr: {choice: []}\n", "space.train.lr: choice: expected a non-empty list"),
    ("space:\n  train.lr: {uniform: [0.01, 0.001]}\n", "empty range [0.01, 0.001]"),
    ("space:\n  train.lr: {loguniform: [0, 0.01]}\n", "loguniform: bounds must be > 0"),
    ("space:\n  train.lr: {choice: [0.01, 0.01]}\n", "repeated values"),
    ("space:\n  train.lr: {choice: [0.001], uniform: [0.001, 0.01]}\n", "expected exactly one of"),
    ("space:\n  train.lr: 0.001\n", "a fixed value belongs in base.overrides"),
    ("space:\n  train.lr: {choice: [0, 0.01]}\n", "value 0.0 rejected: train.lr: expected a number > 0"),
    ("space:\n  lora.r: {uniform: [4, 16]}\n", "lora.r is int; use choice or grid"),
    ("space:\n  lora.r: {choice: [4, big]}\n", "expected an integer, got 'big'"),
    ("space:\n  train.method: {choice: [lora, qlora]}\n", "expected one of ['lora', 'full']"),
    ("space:\n  scaling.num_workers: {choice: [1, 2]}\n", "scaling.* sets each trial's resources"),
    ("space:\n  run.seed: {choice: [1, 2]}\n", "run.* is set by the sweep"),
    ("space:\n  data.val_fraction: {uniform: [0.1, 0.2]}\n", "changes the tokenized data"),
    ("space:\n  train.max_steps: {choice: [20, 40]}\n", "also fixed in base.overrides"),
])
def test_bad_space_refused_with_reason(tmp_path, space, reason):
    assert reason in refusal(tmp_path, space=space)


def test_every_problem_listed_at_once(tmp_path):
    msg = refusal(tmp_path, space="space:\n  train.lrr: {choice: [1]}\n  lora.r: {uniform: [1, 4]}\n")
    assert "train.lrr" in msg and "lora.r" in msg


@pytest.mark.parametrize("overrides,reason", [
    (["base.overrides.train.eval_every=0"], "train.eval_every=0 gives it only at the end"),
    (["scheduler.grace_period=40"], "ASHA could never stop a trial early"),
    (["sweep.search=optuna", "space.lora.r={grid: [4, 8]}"], "grid is not supported"),
    (["base.overrides.train.bogus=1"], "unknown config key 'train.bogus'"),
    (["base.recipe=/nonexistent.yaml"], "base.recipe: config file not found"),
])
def test_contradictory_settings_refused(tmp_path, overrides, reason):
    assert reason in refusal(tmp_path, *overrides)


def test_scheduler_none_needs_no_intermediate_eval(tmp_path):
    make_plan(sweep_cfg(tmp_path, "base.overrides.train.eval_every=0", "scheduler.kind=none"))


def test_resources_and_concurrency(tmp_path):
    plan = make_plan(sweep_cfg(tmp_path, "base.overrides.scaling.memory_per_worker_gb=3"))
    per = trial_resources(plan.base_cfg, 0.1)
    assert per == {"CPU": pytest.approx(0.6), "memory": 3 * 2**30}
    assert max_concurrency(per, {"CPU": 2.0, "memory": 24 * 2**30}) == 3  # 3 x 0.6 CPU on 2 cores
    assert max_concurrency(per, {"CPU": 2.0, "memory": 7 * 2**30}) == 2  # memory-bound
    assert max_concurrency(per, {"CPU": 16.0, "memory": 64 * 2**30}, cap=4) == 4
    with_driver = trial_resources(plan.base_cfg, 0.1, trial_memory_gb=1.5)
    assert with_driver["memory"] == 4.5 * 2**30  # driver side + 1 worker x 3 GB
    assert max_concurrency(with_driver, {"CPU": 2.0, "memory": 12 * 2**30}) == 2
    with pytest.raises(ConfigError, match=r"one trial needs 4.1 CPU .* cluster has 2"):
        max_concurrency({"CPU": 4.1}, {"CPU": 2.0})
    with pytest.raises(ConfigError, match=r"one trial needs 2 GPU .* cluster has 0"):
        max_concurrency({"CPU": 1, "GPU": 2.0}, {"CPU": 8.0})


def test_data_variants_tokenized_once_each(tmp_path):
    plan = make_plan(sweep_cfg(tmp_path, space="space:\n  data.max_seq_len: {grid: [128, 256]}\n"
                                               "  train.lr: {loguniform: [1e-4, 1e-2]}\n"))
    variants = data_variants(plan.params)
    assert variants == [{"data.max_seq_len": 128}, {"data.max_seq_len": 256}]
    keys = {data_key(trial_config(plan.base, dict(v, **{"train.lr": lr}))) for v in variants for lr in (1e-3, 1e-2)}
    assert len(keys) == 2  # lr does not change the data


def test_rerun_with_a_different_space_is_refused(tmp_path):
    plan = make_plan(sweep_cfg(tmp_path))
    check_resumable(plan, plan.spec)  # same config: resumes
    other = make_plan(sweep_cfg(tmp_path, "base.overrides.train.max_steps=30"))
    with pytest.raises(ConfigError, match=r"already exists with a different base \(train.max_steps: 40 -> 30\)"):
        check_resumable(other, plan.spec)


def test_cli_refuses_before_ray(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("space:\n  train.lrr: {choice: [1]}\n")
    rc = main(["sweep", "--config", str(bad), f"base.recipe={REPO / 'configs/tiny.yaml'}",
               f"base.overrides.data.path={SAMPLES}", f"sweep.dir={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2 and "did you mean train.lr?" in err and "Traceback" not in err
    assert not (tmp_path / "sweep").exists()


def _fake_trial(root: Path, tid: str, curve: list[float], max_steps: int, finished: bool) -> Path:
    d = root / "trials" / tid
    (d / "checkpoints" / f"step_{len(curve) * 2:07d}").mkdir(parents=True)
    (d / "checkpoints" / f"step_{len(curve) * 2:07d}" / "state.json").write_text("{}")
    rows = [{"step": 0, "val_loss": 7.0}] + [
        {"step": 2 * (i + 1), "loss": v, "val_loss": v, "max_steps": max_steps} for i, v in enumerate(curve)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "config.yaml").write_text(f"run:\n  name: {tid}\n")
    if finished:
        (d / "report.json").write_text(json.dumps({"finished": True, "steps": max_steps, "val_loss": curve[-1],
                                                   "wall_s": 1.0}))
    return d


def test_results_table_best_and_plot(tmp_path):
    a = _fake_trial(tmp_path, "aaa", [6.9, 6.5, 6.1], 6, True)
    b = _fake_trial(tmp_path, "bbb", [6.99], 6, False)       # ASHA stopped it at step 2
    c = _fake_trial(tmp_path, "ccc", [6.8, 6.4, 6.2], 6, True)
    rows = [trial_row("aaa", {"train.lr": 1e-3}, a, None), trial_row("bbb", {"train.lr": 1e-7}, b, None),
            trial_row("ccc", {"train.lr": 3e-3}, c, None),
            trial_row("ddd", {"train.lr": 1e-2}, tmp_path / "trials/ddd", "RuntimeError('boom')")]
    assert [r["status"] for r in rows] == ["finished", "stopped", "finished", "error"]
    assert rows[1]["steps"] == 2 and rows[1]["val_loss"] == 6.99
    best = pick_best(rows)
    assert best["trial_id"] == "aaa"
    out = write_results(tmp_path, rows, best, {"search": "random"})
    assert out["run_dir"] == str(a) and out["params"] == {"train.lr": 1e-3}
    assert "candidate=" + str(a) in out["eval_command"]
    assert json.loads((tmp_path / "best.json").read_text()) == out
    assert (tmp_path / "best_config.yaml").read_text() == (a / "config.yaml").read_text()
    table = (tmp_path / "results.csv").read_text().splitlines()
    assert table[0].startswith("trial_id,param:train.lr,status") and len(table) == 5
    assert len(json.loads((tmp_path / "results.json").read_text())["trials"]) == 4
    assert (tmp_path / "sweep.png").stat().st_size > 10_000
    assert pick_best([rows[1], rows[3]]) is None  # nothing finished: no candidate


def test_sweep_progress_lines_count_trials_and_best(capsys):
    """The sweep's console line (issue 21): done/running/total, errored, best val loss so far."""
    import io
    from types import SimpleNamespace as T

    import pickle

    from rayft.tune.progress import SweepProgress

    out = io.StringIO()
    cb = SweepProgress(4, every_s=3600)
    cb = pickle.loads(pickle.dumps(cb))  # Tune pickles the RunConfig holding it
    cb.file = out
    trials = [T(trial_id="a", status="RUNNING"), T(trial_id="b", status="RUNNING"),
              T(trial_id="c", status="PENDING"), T(trial_id="d", status="PENDING")]
    cb.on_trial_result(1, trials, trials[0], {"val_loss": 0.9})
    cb.on_trial_result(1, trials, trials[1], {"val_loss": 0.7})
    cb.on_trial_result(2, trials, trials[0], {"val_loss": float("nan")})
    cb.on_step_end(2, trials)  # not yet time for a periodic line
    assert out.getvalue() == ""
    cb.on_trial_complete(3, trials, trials[0])  # Tune marks it TERMINATED only after this call
    trials[0].status = "TERMINATED"
    trials[2].status = "RUNNING"
    cb.on_trial_error(4, trials, trials[1])
    trials[1].status = "ERROR"
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[rayft] sweep 1/4 trials done, 1 running | best val loss 0.7000 (b) | ")
    assert lines[1].startswith("[rayft] sweep 2/4 trials done, 1 running, 1 errored | best val loss 0.7000 (b)")
    cb2 = SweepProgress(2, file=out, every_s=0)
    cb2.on_step_end(1, trials[:2])
    assert out.getvalue().splitlines()[-1].startswith("[rayft] sweep 2/2 trials done, 0 running, 1 errored | ")
