"""`rayft train`: TrainConfig -> a Ray Train TorchTrainer run -> a run directory.

``run_training`` is the recipe, read top to bottom:

1. ``plan``     (driver, no Ray) inputs exist and parse, the model resolves, its shape, the
                DeepSpeed config, the memory estimate: every refusal before Ray starts
2. data         Ray starts; ``datasets.prepare`` reads (bad rows -> rejects), keeps
                ``data.language``, splits; ``datasets.tokenized_datasets`` tokenizes per worker
3. ``fit``      the TorchTrainer runs ``loop.train_loop_per_worker`` on every worker, with a
                progress bar fed by metrics.jsonl
4. publish      ``publish.publish``: adapter/model into place, report.json, loss.png, sample answer

`rayft sweep` trials call the same recipe with the data prepared once (see run_training).
"""
from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import _env
from ..config import ConfigError, saved_command, saved_config, to_dict
from ..storage import atomic_write_text, read_jsonl, write_jsonl
from .config import TrainConfig
from .datasets import (Prepared, check_inputs, pre_split_config, prepare, run_dir_of,  # noqa: F401  (re-exported)
                       tokenized_datasets)
from .memory import GB
from .publish import TrainingDiverged, build_report, publish, sample_generate  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from .preflight import Preflight


def run_training(cfg: TrainConfig, prepared: Prepared | None = None, datasets: tuple | None = None,
                 callbacks: list | None = None) -> str:
    """`rayft train`: returns the run directory (printed last by the CLI).

    The optional arguments are for `rayft sweep` trials: ``prepared`` is ``prepare(cfg)``'s
    result and ``datasets`` ``tokenized_datasets``' (both made once on the sweep driver),
    ``callbacks`` Ray Train callbacks (metrics forwarded to Tune).
    """
    _env.apply()
    t_start = time.time()
    pl = plan(cfg, prepared)                                          # 1. plan
    _env.ray_start(log_to_driver=True, log_dir=pl.run_dir / "logs")
    if not _env.verbose():
        import ray.data
        ray.data.DataContext.get_current().enable_progress_bars = False  # one bar: training's
    p = prepared if prepared is not None else prepare(cfg, source=pl.source)  # 2. data (Ray Data read)
    start_step = open_run_dir(cfg, p)
    if not _env.verbose():
        _env.quiet_ray(p.run_dir / "logs")  # (again: run.overwrite recreated the run dir)
        _env.link_session_logs(p.run_dir / "logs")
    from .. import tracking
    tracker = tracking.start(cfg, p.run_dir, cfg.run.name, resumed=start_step > 0)  # tracking=[...]
    tracker.follow(p.run_dir / "metrics.jsonl")
    ok = False
    try:
        result = fit(cfg, p, datasets, callbacks, pl.checked, start_step)  # 3. fit
        if result.error:
            raise training_failed(cfg, p, result.error, time.time() - t_start, start_step)
        out = publish(cfg, p, pl.checked, time.time() - t_start, start_step)  # 4. publish
        ok = True
        return out
    finally:
        report_html(p.run_dir, cfg)
        tracker.finish(p.run_dir, ok)


def report_html(run_dir: Path, cfg: TrainConfig | None = None) -> None:
    """report.html beside report.json (when there is one), and into the bucket with it when
    run.dir is remote; a page that cannot be written is a warning."""
    if (run_dir / "report.json").is_file():
        from .report_html import write_report_html
        try:
            write_report_html(run_dir)
            from .remote import location
            loc = location(cfg) if cfg is not None else None
            if loc is not None:
                from .. import objstore
                objstore.upload(str(run_dir / "report.html"), loc, "report.html")
        except Exception as e:  # noqa: BLE001 - the run's results are in report.json either way
            print(f"[rayft] warning: report.html not written: {type(e).__name__}: {e}", file=sys.stderr)


class TrainingFailed(ConfigError):
    """The TorchTrainer ended with an error (after scaling.max_failures restarts): one line on
    the console, the whole story in report.json and the logs it names."""


def training_failed(cfg: TrainConfig, p: Prepared, error: BaseException, wall: float,
                    start_step: int) -> TrainingFailed:
    """Write report.json (finished: false, the error, where the logs are) and return the
    one-line error the CLI prints (exit 2) instead of Ray's multi-page traceback."""
    from ..storage import atomic_write_json
    from .checkpoint import latest_checkpoint_dir

    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    cause = next((ln for ln in reversed(lines) if "Error" in ln.split(":")[0]), lines[0] if lines else "")
    cause = (cause or type(error).__name__)[:300]
    logs = _ray_logs_dir()
    ck = latest_checkpoint_dir(p.run_dir)
    atomic_write_json(p.run_dir / "report.json", {
        "run_dir": str(p.run_dir), "finished": False, "failed": True, "error": cause,
        "error_type": type(error).__name__, "logs": {"ray_session": logs, "metrics": str(p.run_dir / "metrics.jsonl")},
        "last_checkpoint": str(ck) if ck else None, "resumed_from_step": start_step or None,
        "wall_s": wall, "config": saved_config(cfg), "command": saved_command(sys.argv)})
    from .remote import push
    remote = push(cfg, p.run_dir)  # run.dir=s3://...: report.json (and metrics) into the bucket
    return TrainingFailed(f"training failed: {cause} | last checkpoint: {ck or 'none'} (a rerun resumes "
                          f"from it) | worker logs: {logs or 'the Ray session logs'} | report: "
                          f"{remote + '/report.json' if remote else p.run_dir / 'report.json'}")


def _ray_logs_dir() -> str | None:
    try:  # Ray has no public accessor for the session's log directory
        from ray._private.worker import _global_node
        return _global_node.get_logs_dir_path() if _global_node is not None else None
    except Exception:
        return None


# ---- 1. plan ----------------------------------------------------------------------------------
@dataclass
class Plan:
    run_dir: Path
    source: str          # the resolved model (local path or preset)
    checked: Preflight   # dtype, final DeepSpeed dict, model shape, memory estimate


def plan(cfg: TrainConfig, prepared: Prepared | None = None) -> Plan:
    """Everything that can refuse the run, on the driver, before Ray starts: data files and
    model (``check_inputs``, skipped when the sweep prepared them), then the device, DeepSpeed
    and memory checks (``preflight.preflight``, which prints the estimate)."""
    from .preflight import preflight

    run_dir = prepared.run_dir if prepared is not None else run_dir_of(cfg)
    source = prepared.source if prepared is not None else check_inputs(cfg)
    return Plan(run_dir, source, preflight(cfg, source, run_dir.resolve()))


# ---- 2. data: the run directory ---------------------------------------------------------------
def open_run_dir(cfg: TrainConfig, p: Prepared) -> int:
    """Create (or, with run.overwrite, recreate) the run directory; write config.yaml and
    rejects.jsonl; print the run's headline. Returns the step a rerun resumes from (0: fresh)."""
    import yaml

    from .checkpoint import latest_checkpoint_dir, read_state

    run_dir = p.run_dir
    if cfg.run.overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    from .remote import pull
    pull(cfg, run_dir, overwrite=cfg.run.overwrite)  # run.dir=s3://...: the bucket's newest checkpoint
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(saved_config(cfg), sort_keys=False, allow_unicode=True))
    write_jsonl(run_dir / "rejects.jsonl", p.read.rejects)
    prev = latest_checkpoint_dir(run_dir)
    start_step = read_state(prev)["step"] if prev else 0
    print(f"[rayft] run {run_dir} | {p.stats['train_rows']} train / {p.stats['val_rows']} val rows, "
          f"{p.stats['rows_rejected']} rejected | model {cfg.model.name} | "
          f"{cfg.scaling.num_workers} workers x {cfg.scaling.cpus_per_worker:g} CPU"
          + (f" | resuming from step {start_step}" if prev else ""), file=sys.stderr)
    return start_step


# ---- 3. fit -----------------------------------------------------------------------------------
def fit(cfg: TrainConfig, p: Prepared, datasets: tuple | None = None, callbacks: list | None = None,
        checked: Preflight | None = None, start_step: int = 0):
    """Run the TorchTrainer (tokenizing first unless ``datasets`` is given); returns the Ray
    Train Result. ``checked``: ``plan``'s preflight (computed here when None)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from .loop import train_loop_per_worker
    from .preflight import preflight
    from .remote import pull, storage

    checked = checked if checked is not None else preflight(cfg, p.source, p.run_dir.resolve())
    check_resources(cfg)
    res = {"CPU": cfg.scaling.cpus_per_worker}
    if cfg.scaling.memory_per_worker_gb:
        res["memory"] = int(cfg.scaling.memory_per_worker_gb * GB)
    full, parts = datasets if datasets is not None else tokenized_datasets(p, cfg)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "source": p.source, "run_dir": str(p.run_dir.resolve()),
                           "deepspeed": checked.ds_config},
        scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                     resources_per_worker=res),
        run_config=RunConfig(
            name="checkpoints", **storage(cfg, p.run_dir),  # run.dir=s3://...: Ray Train writes to the bucket
            failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            # DeepSpeed picks its accelerator from DS_ACCELERATOR: decided by the WORKERS' device,
            # not the driver's (a CPU-only head submitting to GPU workers must not pass "cpu")
            worker_runtime_env={"env_vars": dict(_env.worker_env(compact_malloc(cfg)),
                                                 DS_ACCELERATOR="cuda" if cfg.scaling.use_gpu else "cpu")},
            callbacks=callbacks),
        datasets=full,
        dataset_config=pre_split_config(parts),
    )
    bar = Progress(p.run_dir / "metrics.jsonl", cfg.train.max_steps, start_step)
    bar.start()
    try:
        result = trainer.fit()
    finally:
        bar.stop_evt.set()
        bar.join(timeout=5)
    pull(cfg, p.run_dir)  # run.dir=s3://...: mirror the newest checkpoint (published or named on failure)
    return result


def check_resources(cfg: TrainConfig) -> None:
    """The cluster can place every worker (CPU, GPU, memory), else one ConfigError."""
    import ray

    res = ray.cluster_resources()
    need_cpu = cfg.scaling.num_workers * cfg.scaling.cpus_per_worker
    if need_cpu > res.get("CPU", 0) + 1e-9:
        raise ConfigError(f"scaling: {cfg.scaling.num_workers} workers x {cfg.scaling.cpus_per_worker} CPU = "
                          f"{need_cpu:g} CPUs, but the cluster has {res.get('CPU', 0):g}; lower "
                          "scaling.num_workers or scaling.cpus_per_worker (fractions allowed)")
    if cfg.scaling.use_gpu and cfg.scaling.num_workers > res.get("GPU", 0):
        raise ConfigError(f"scaling.use_gpu: {cfg.scaling.num_workers} GPUs needed, cluster has {res.get('GPU', 0):g}")
    mem = cfg.scaling.memory_per_worker_gb * GB * cfg.scaling.num_workers
    if mem > res.get("memory", 0):
        raise ConfigError(f"scaling.memory_per_worker_gb: {mem / GB:.1f} GB needed, cluster has "
                          f"{res.get('memory', 0) / GB:.1f} GB")


def compact_malloc(cfg: TrainConfig) -> bool:
    """memory.malloc resolved: compact under a memory budget or DeepSpeed, else glibc's default."""
    m = cfg.memory.malloc
    return m == "compact" or (m == "auto" and (cfg.memory.budget_gb > 0 or cfg.train.strategy != "ddp"))


class Progress(threading.Thread):
    """Driver-side progress bar fed by the metrics rank 0 appends to metrics.jsonl; guard events
    are printed above it. On a non-interactive terminal (a job log) a line every ``LINE_EVERY_S``
    seconds instead of a redrawn bar."""

    LINE_EVERY_S = 30.0

    def __init__(self, path: Path, total: int, start: int):
        super().__init__(daemon=True)
        from tqdm import tqdm

        self.path, self.stop_evt = path, threading.Event()
        self.tty = sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=start, desc="train", unit="step", file=sys.stderr,
                        dynamic_ncols=True, mininterval=0.5 if self.tty else self.LINE_EVERY_S,
                        disable=not self.tty)
        self.events_seen = {json.dumps(r, sort_keys=True) for r in read_jsonl(path) if "event" in r}
        self.t_line, self.line_step = time.time(), start
        self.lines = 0

    def run(self) -> None:
        while not self.stop_evt.wait(1.0):
            self.update()
        self.update()
        if not self.tty:
            rows = [r for r in read_jsonl(self.path) if "loss" in r]
            if rows:
                self.line(rows[-1], final=True)
        self.bar.close()

    def update(self) -> None:
        all_rows = read_jsonl(self.path)
        if not _env.verbose():  # (with --verbose rank 0's own print shows them)
            for ev in (r for r in all_rows if "event" in r):
                key = json.dumps(ev, sort_keys=True)
                if key not in self.events_seen:
                    self.events_seen.add(key)
                    self.bar.write(f"[rayft] guard: {ev.get('message', ev['event'])}", file=sys.stderr)
        rows = [r for r in all_rows if "loss" in r]
        if rows and not self.tty:
            self.line(rows[-1])
        elif rows:
            last = rows[-1]
            self.bar.n = min(last["step"], self.bar.total)
            self.bar.set_postfix(loss=f"{last['loss']:.3f}", lr=f"{last['lr']:.2e}",
                                 tok_s=f"{last['tokens_per_s']:.0f}", refresh=False)
            self.bar.refresh()

    def line(self, last: dict, final: bool = False) -> None:
        now = time.time()
        if last["step"] == self.line_step or (not final and now - self.t_line < self.LINE_EVERY_S):
            return
        rate = (last["step"] - self.line_step) / max(now - self.t_line, 1e-9)
        eta = (self.bar.total - last["step"]) / rate if rate > 0 else 0
        # no ETA on the first line: its rate would include Ray's and the workers' start-up
        eta_s = f" | ETA {eta:.0f} s" if self.lines else ""
        print(f"[rayft] train step {last['step']}/{self.bar.total} | loss {last['loss']:.3f} | lr {last['lr']:.2e} "
              f"| {last['tokens_per_s']:.0f} tokens/s{eta_s}", file=sys.stderr, flush=True)
        self.t_line, self.line_step = now, last["step"]
        self.lines += 1
