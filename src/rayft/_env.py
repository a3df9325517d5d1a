"""Process-wide defaults applied before Ray is imported (secure, quiet, CPU-friendly)."""
from __future__ import annotations

import os

DEFAULTS = {
    # Ray 2.60 binds a local head to the external address unless this is 0.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "DS_ACCELERATOR": "cpu" if not os.path.exists("/dev/nvidia0") else "",
    # Ray Train 2.60's controller drains `ray.train.report` (a queue of size 1) once per poll
    # and polls every 2 s by default, so each report and each state change waited up to 2 s:
    # the tiny recipe ran 2.9 steps/s at 2 s and 4.9 at 0.25 s (benchmarks/report_interval_bench.py).
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
}

WORKER_ENV_KEYS = ("DS_ACCELERATOR", "TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE", "RAYFT_CACHE",
                   "TORCH_EXTENSIONS_DIR", "HF_HOME", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")


def apply() -> None:
    for k, v in DEFAULTS.items():
        if v:
            os.environ.setdefault(k, v)


#: glibc malloc settings for every Ray worker (a value already in the environment wins).
#: Without them glibc's mmap threshold grows to 32 MB after the first large free, so the
#: many 1-32 MB tensors of a training step (layer weights, ZeRO partitions and gathers) land
#: in the heap and their freed pages stay resident: measured on a ZeRO-3 LoRA 0.5B worker,
#: RSS after building the model was 2.75 GB instead of 1.72, and the peak 3.74 GB instead of
#: 2.98. A fixed 1 MB threshold gives every larger tensor its own mapping, returned on free.
WORKER_MALLOC = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(2**20),
                 "MALLOC_TRIM_THRESHOLD_": str(2**20)}


def worker_env(compact_malloc: bool = False) -> dict:
    """Env vars for Ray workers; ``compact_malloc`` adds WORKER_MALLOC (train's memory.malloc).
    Not the default: returning every freed tensor to the OS costs speed, measured on a DDP
    LoRA of SmolLM2-135M (2 workers): 179 tokens/s with it, 218 without (benchmarks/RESULTS.md)."""
    env = {k: os.environ[k] for k in WORKER_ENV_KEYS if os.environ.get(k)}
    if compact_malloc:
        env |= {k: os.environ.get(k) or v for k, v in WORKER_MALLOC.items()}
    return env


def verbose() -> bool:
    """``--verbose`` (or RAYFT_VERBOSE=1, e.g. under ``ray job submit``): Ray's own output on the console."""
    return os.environ.get("RAYFT_VERBOSE", "").strip().lower() in ("1", "true", "yes", "on")


def ray_start(address: str = "", num_cpus: float | None = None, log_to_driver: bool = False,
              log_dir: str | os.PathLike | None = None) -> bool:
    """Join or start Ray unless this process already has it; True when this call started it
    (the caller then shuts it down). ``address`` (a stage's ``ray.address``) wins; under
    ``ray job submit`` RAY_ADDRESS names the job's cluster; otherwise a new local Ray bound
    to loopback (``num_cpus``: its CPU count, None = all). ``log_to_driver``: print the
    workers' output here, asked by stages whose workers print; honoured with ``--verbose``
    only: by default the console is rayft's and Ray's output goes to ``log_dir`` (see
    ``quiet_ray``) and the Ray session's log files."""
    apply()
    import ray
    if not verbose():
        quiet_ray(log_dir)
    if ray.is_initialized():
        return False
    kw = dict(include_dashboard=False, log_to_driver=log_to_driver and verbose(),
              runtime_env={"env_vars": worker_env()})
    if address:
        ray.init(address=address, **kw)
    elif os.environ.get("RAY_ADDRESS"):
        ray.init(**kw)
    else:  # "local": not a cluster named by a stale /tmp/ray/ray_current_cluster (a stopped `ray start`
        # head leaves it behind, and ray.init() without an address would wait on that dead GCS forever)
        ray.init(address="local", num_cpus=num_cpus or None, **kw)
    return True


class _ConsoleErrorsOnly:
    """A logging filter for Ray's console handlers: only errors pass (the rest is in the log file)."""

    def filter(self, record) -> bool:
        return record.levelno >= 40


_quiet_file: str | None = None


def quiet_ray(log_dir: str | os.PathLike | None = None) -> None:
    """Keep Ray's chatter off the console (unless ``--verbose``), with Ray's own switches:

    * its Python loggers (``ray``, ``ray.data``, ``ray.tune``...) keep their handlers, but the
      console ones pass errors only; everything goes to ``<log_dir>/driver.log`` when given;
    * Ray Data's driver-side progress bars are off on a non-interactive terminal, and the
      per-operator bars always (``DataContext.enable_progress_bars`` /
      ``enable_operator_progress_bars``); a stage with its own bar turns them off entirely;
    * workers' output (Ray Data progress from split coordinators, Ray Train's "Reporting
      training result" and PlacementGroupCleaner messages, worker warnings) is not sent to
      the driver (``ray.init(log_to_driver=False)``): it stays in the Ray session's logs,
      linked from ``<log_dir>/ray_session`` when the session is on this machine.
    """
    global _quiet_file
    import logging
    import sys

    import ray.data  # configures the ray.data logger, so its console handler is filtered too

    import warnings

    from huggingface_hub.utils import disable_progress_bars
    disable_progress_bars()  # transformers' "Loading weights" bar when a stage reloads a model here
    if "transformers.utils.logging" in sys.modules:  # (imported before: it read the switch already)
        sys.modules["transformers.utils.logging"].disable_progress_bar()
    # peft asks transformers' deprecated alias on every wrap: a warning only transformers can act on
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_operator_progress_bars = False
    if not sys.stderr.isatty():
        ctx.enable_progress_bars = False
    fh = None
    if log_dir is not None:
        os.makedirs(log_dir, exist_ok=True)
        path = os.path.join(os.fspath(log_dir), "driver.log")
        if path != _quiet_file or not os.path.exists(path):  # (run.overwrite removed the run dir)
            fh = logging.FileHandler(path, encoding="utf-8")
            fh.setLevel(logging.INFO)
            fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)d -- "
                                              "%(message)s"))
            _quiet_file = path
    names = ["ray"] + sorted(n for n in logging.root.manager.loggerDict if n.startswith("ray."))
    for name in names:
        lg = logging.getLogger(name)
        for h in lg.handlers:
            if type(h) is not logging.FileHandler and isinstance(h, logging.StreamHandler) \
                    and not any(isinstance(f, _ConsoleErrorsOnly) for f in h.filters):
                h.addFilter(_ConsoleErrorsOnly())
        if fh is not None:
            for h in [h for h in lg.handlers if getattr(h, "_rayft_log", False)]:
                lg.removeHandler(h)
            if name == "ray" or (lg.handlers and not lg.propagate):
                fh._rayft_log = True
                lg.addHandler(fh)


def link_session_logs(log_dir: str | os.PathLike) -> str | None:
    """``<log_dir>/ray_session`` -> this Ray session's log directory (workers' stdout/stderr,
    Ray Train and Ray Data logs), when it is on this machine; its path, else None."""
    try:  # Ray has no public accessor for the session's log directory
        from ray._private.worker import _global_node
        logs = _global_node.get_logs_dir_path() if _global_node is not None else None
    except Exception:
        return None
    if not logs or not os.path.isdir(logs):
        return None
    link = os.path.join(os.fspath(log_dir), "ray_session")
    try:
        os.makedirs(log_dir, exist_ok=True)
        if os.path.islink(link):
            os.unlink(link)
        if not os.path.exists(link):
            os.symlink(logs, link)
    except OSError:
        pass
    return logs
