"""`rayft sweep`: a Ray Tune search over the train loop of `rayft train`.

Order matters: every check (space, base config, data, cluster resources) runs on the
driver before the first trial starts; then the data is read and tokenized once per data
variant while the cluster's CPUs are still free, so trials only train.

Layout of <sweep.dir>/<sweep.name>/: sweep.json (what a resume must match), tune/ (the
Tune experiment, restored by a rerun), trials/<trial id>/ (one `rayft train` run dir per
trial), results.csv/.json, best.json, best_config.yaml, sweep.png.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import yaml

from .. import _env, objstore
from ..config import to_dict
from ..data.formats import DataError
from ..storage import atomic_write_json, atomic_write_text
from .config import SweepConfig
from .plan import Plan, check_resumable, make_plan
from .results import pick_best, trial_row, write_results
from .space import data_key, data_variants, max_concurrency, trial_config, trial_resources


def trial_dirname(trial) -> str:
    """Stable names: the trial id, no timestamps (Tune's default dirname has a date)."""
    return trial.trial_id


def _prepare_data(plan: Plan) -> dict:
    """data_key -> (train config, Prepared) for every data variant; DataError/ConfigError on bad data."""
    from ..train.datasets import check_inputs, prepare

    out = {}
    bs = next((p.values for p in plan.params if p.key == "train.batch_size"), [plan.base_cfg.train.batch_size])
    variants = [(trial_config(plan.base, v), v) for v in data_variants(plan.params)]
    sources = [check_inputs(cfg) for cfg, _ in variants]  # bad files/model of any variant: before Ray starts
    _env.ray_start(log_to_driver=True)
    for (cfg, _), source in zip(variants, sources):
        p = prepare(cfg, source=source)  # Ray Data read
        need = cfg.scaling.num_workers * max(bs)
        if p.stats["train_rows"] < need:
            raise DataError(f"{p.stats['train_rows']} training rows; train.batch_size up to {max(bs)} x "
                            f"{cfg.scaling.num_workers} workers needs {need}")
        if not p.stats["val_rows"]:
            raise DataError("no validation rows (data.val_fraction=0 and no data.val_path): trials are "
                            "ranked and early-stopped on validation loss")
        out[data_key(cfg)] = (cfg, p)
    return out


def _param_space(plan: Plan) -> dict:
    from ray import tune

    make = {"choice": tune.choice, "grid": tune.grid_search,
            "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v)}
    return {p.key: make[p.kind](p.values) for p in plan.params}


def _trial_count(plan: Plan, scfg: SweepConfig) -> int:
    """Trials Tune will run: num_samples, times every grid key's value count."""
    n = scfg.sweep.num_samples
    for p in plan.params:
        if p.kind == "grid":
            n *= len(p.values)
    return n


def _new_tuner(plan: Plan, scfg: SweepConfig, trainable, concurrency: int):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    from .progress import SweepProgress

    if plan.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch
        search = OptunaSearch(seed=scfg.sweep.seed)
    else:
        # Tune ignores TuneConfig.max_concurrent_trials for a SearchGenerator instance: limit here
        search = BasicVariantGenerator(random_state=scfg.sweep.seed, max_concurrent=concurrency)
    sched = FIFOScheduler()
    if scfg.scheduler.kind == "asha":
        # time in optimizer steps (not Tune iterations: only val-loss reports reach Tune)
        # a trial that reaches max_t simply ends (its function returns); never STOP it there
        sched = ASHAScheduler(time_attr="step", max_t=plan.max_steps, grace_period=scfg.scheduler.grace_period,
                              reduction_factor=scfg.scheduler.reduction_factor, stop_last_trials=False)
    return tune.Tuner(
        trainable, param_space=_param_space(plan),
        tune_config=tune.TuneConfig(metric="val_loss", mode="min", search_alg=search, scheduler=sched,
                                    num_samples=scfg.sweep.num_samples,
                                    max_concurrent_trials=concurrency if plan.search == "optuna" else None,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(name="tune", **_storage(plan), verbose=1 if _env.verbose() else 0,
                                  callbacks=[SweepProgress(_trial_count(plan, scfg))],
                                  failure_config=tune.FailureConfig(max_failures=scfg.sweep.trial_retries)))


def _storage(plan: Plan) -> dict:
    """Where Tune keeps the experiment: the sweep directory, or the bucket (sweep.dir=s3://...)."""
    if plan.location is None:
        return {"storage_path": str(plan.sweep_dir.resolve())}
    return {"storage_path": plan.location.path, "storage_filesystem": plan.location.fs}


def _publish(plan: Plan, names: list[str]) -> None:
    """sweep.dir=s3://...: copy the sweep's own files up (one PUT each: never a partial object)."""
    for name in names:
        if plan.location is not None and (plan.sweep_dir / name).is_file():
            objstore.upload(str(plan.sweep_dir / name), plan.location, name)


def _trial_rows(plan: Plan, grid) -> tuple[list[dict], dict]:
    """One results row per trial, and trial id -> the local directory its files are read from.
    In the bucket: each trial's metrics.jsonl, report.json and config.yaml are copied into the
    sweep's local copy (the trial may have run on another node) and the row names the bucket."""
    rows, local = [], {}
    keys = {p.key for p in plan.params}
    for r in grid:
        tid = Path(r.path).name
        params = {k: v for k, v in (r.config or {}).items() if k in keys}
        run_dir = plan.sweep_dir / "trials" / tid
        if plan.location is not None:
            loc = plan.location.child("trials").child(tid)
            for name in ("metrics.jsonl", "report.json", "config.yaml"):
                if objstore.exists(loc, name):
                    objstore.download(loc, name, str(run_dir / name))
        row = trial_row(tid, params, run_dir, repr(r.error) if r.error else None)
        if plan.location is not None:
            ck = [n for n in objstore.list_dir(loc, "checkpoints") if objstore.exists(loc, f"checkpoints/{n}/state.json")]
            row.update(run_dir=objstore.public(loc.uri), checkpoint=f"{loc.shown}/checkpoints/{ck[-1]}" if ck else None)
        local[tid] = run_dir
        rows.append(row)
    rows.sort(key=lambda r: r["trial_id"])
    return rows, local


def run_sweep(scfg: SweepConfig) -> str:
    """`rayft sweep`: returns the best trial's run directory (a `rayft eval` candidate)."""
    _env.apply()
    t0 = time.time()
    plan = make_plan(scfg)
    sweep_dir = plan.sweep_dir
    if scfg.sweep.overwrite and sweep_dir.exists():
        shutil.rmtree(sweep_dir)
    saved = sweep_dir / "sweep.json"
    if plan.location is not None:  # a fresh local copy; what a resume must match is in the bucket
        shutil.rmtree(sweep_dir, ignore_errors=True)
        if scfg.sweep.overwrite:
            objstore.delete_dir(plan.location)
            shutil.rmtree(objstore.work_dir("runs", plan.location.child("trials").uri), ignore_errors=True)
        elif objstore.exists(plan.location, "sweep.json"):
            objstore.download(plan.location, "sweep.json", str(saved))
    resumed_sweep = saved.is_file()
    if saved.is_file():
        check_resumable(plan, json.loads(saved.read_text()))
    data = _prepare_data(plan)  # checks every data variant, then starts Ray and reads with Ray Data

    import ray

    per_trial = trial_resources(plan.base_cfg, scfg.sweep.trial_cpus, scfg.sweep.trial_memory_gb)
    concurrency = max_concurrency(per_trial, ray.cluster_resources(), scfg.sweep.max_concurrent)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if not _env.verbose():  # Ray's chatter from here on: <sweep dir>/logs/driver.log (a refused sweep writes nothing)
        _env.quiet_ray(sweep_dir / "logs")
    atomic_write_json(saved, plan.spec)
    atomic_write_text(sweep_dir / "sweep.yaml", yaml.safe_dump(to_dict(scfg), sort_keys=False, allow_unicode=True))
    _publish(plan, ["sweep.json", "sweep.yaml"])
    from .. import tracking  # tracking=[mlflow] in the recipe: a parent run, the trials its children
    parent = tracking.start(plan.base_cfg, sweep_dir, sweep_dir.name, resumed=resumed_sweep, kind="sweep",
                            params_of=scfg)
    try:
        return _tune(scfg, plan, data, t0, per_trial, concurrency, parent)
    except BaseException:
        parent.finish(sweep_dir, ok=False)
        raise


def _tune(scfg: SweepConfig, plan, data: dict, t0: float, per_trial: dict, concurrency: int, parent) -> str:
    """run_sweep from the trials on: Tune runs them, results.csv / sweep.png, the best trial."""
    import ray
    import ray.data
    from ray import tune

    from ..train.datasets import tokenized_datasets
    from .reaper import Reaper
    from .trial import run_trial

    sweep_dir = plan.sweep_dir
    # trials iterate these datasets; their progress bars would repeat in every trial's log
    ray.data.DataContext.get_current().enable_progress_bars = False
    shared = {}
    for key, (cfg, p) in data.items():
        # Trials get the tables and tokenized blocks, not the raw rows (report counts are in p.stats)
        slim = dataclasses.replace(p, read=dataclasses.replace(p.read, rows=[]))
        shared[key] = (slim, tokenized_datasets(p, cfg))
    driver = {"CPU": scfg.sweep.trial_cpus}  # the trial's own bundle; workers get theirs from Ray Train
    if scfg.sweep.trial_memory_gb:
        driver["memory"] = int(scfg.sweep.trial_memory_gb * 2**30)
    reaper = Reaper.remote()  # frees stopped trials' worker placement groups (see reaper.py)
    trials_dir = plan.location.child("trials").uri if plan.location else str((sweep_dir / "trials").resolve())
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=plan.base, shared=shared, reaper=reaper, trials_dir=trials_dir,
                             storage_env=objstore.env_of(trials_dir)),
        driver)
    st = _storage(plan)
    tune_dir = f"{st['storage_path']}/tune"
    fs = st.get("storage_filesystem")
    resumed = tune.Tuner.can_restore(tune_dir, storage_filesystem=fs)
    print(f"[rayft] sweep {plan.shown} | {len(plan.params)} searched keys, {plan.search} search, "
          f"{scfg.sweep.num_samples} samples, scheduler {scfg.scheduler.kind} | per trial "
          + ", ".join(f"{k} {v / 2**30:.1f} GB" if k == "memory" else f"{k} {v:g}" for k, v in per_trial.items())
          + f" -> {concurrency} at once" + (" | resuming (Tuner.restore)" if resumed else ""), file=sys.stderr)
    if resumed:
        tuner = tune.Tuner.restore(tune_dir, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=fs)
    else:
        tuner = _new_tuner(plan, scfg, trainable, concurrency)
    grid = tuner.fit()
    # every trial has ended; give the last stopped ones' controllers time to die and be reaped
    # (the reaper goes away with this function, and with it any placement group it missed)
    deadline = time.time() + 120
    while ray.get(reaper.stats.remote())["watching"] and time.time() < deadline:
        time.sleep(1)
    reaped = ray.get(reaper.stats.remote())["reaped"]

    rows, local = _trial_rows(plan, grid)
    best = pick_best(rows)
    extra = {"sweep_dir": plan.shown, "search": plan.search, "scheduler": scfg.scheduler.kind,
             "concurrency": concurrency, "per_trial_resources": per_trial, "resumed": resumed,
             "placement_groups_reaped": len(reaped),
             "wall_s": time.time() - t0, "best": best and best["trial_id"]}
    out = write_results(sweep_dir, rows, best, extra, local)
    _publish(plan, ["results.csv", "results.json", "best.json", "best_config.yaml", "sweep.png"])
    parent.artifacts([sweep_dir / "results.csv", sweep_dir / "sweep.png"])
    parent.finish(sweep_dir, ok=bool(best), extra={"best_trial": best and best["trial_id"],
                                                    "best_val_loss": best and best["val_loss"]})
    _print_table(rows, best)
    if not best:
        raise RuntimeError(f"no trial finished; see {plan.shown}/results.csv")
    print(f"[rayft] best {best['trial_id']} val loss {best['val_loss']:.4f} {out['params']} | "
          f"results {plan.shown}/results.csv | plot {plan.shown}/sweep.png | "
          f"evaluate: {out['eval_command']}", file=sys.stderr)
    return best["run_dir"]


def _print_table(rows: list[dict], best: dict | None) -> None:
    keys = [k for k in rows[0] if k.startswith("param:")] if rows else []
    print("[rayft] trial            status      steps  val_loss  " + "  ".join(k[6:] for k in keys), file=sys.stderr)
    for r in rows:
        vl = "n/a" if r["val_loss"] is None else f"{r['val_loss']:.4f}"
        mark = "*" if best and r["trial_id"] == best["trial_id"] else " "
        print(f"[rayft] {mark}{r['trial_id']:<16} {r['status']:<10} {r['steps']:>5}  {vl:>8}  "
              + "  ".join(str(r[k]) for k in keys), file=sys.stderr)
