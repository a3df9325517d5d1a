"""`rayft watch ... watch.detached=true`: the daemon kept alive by Ray.

The command returns at once. A detached Ray actor (``WatchSupervisor``, 0 CPUs, pinned to
the node the command ran on because the watch directory is there, ``max_restarts=-1``)
runs the daemon as its child process (``rayft watch`` with the same resolved config) and:

* restarts the daemon when it dies (a crash, an OOM kill, ``kill -9``), with backoff; the
  daemon's state file makes the restart finish the interrupted cycle;
* is itself restarted by Ray when its process dies; its daemon child goes with it
  (``PR_SET_PDEATHSIG``), so the restarted supervisor starts exactly one daemon again;
* ends when the daemon exits 0 (``rayft watch stop dir=...``, or ``once=true`` with nothing
  left to do): it removes itself from Ray (``ray.kill(..., no_restart=True)``).

The actor is named ``rayft-watch-<hash of the watch dir>`` in namespace ``rayft``, so a second
``watch.detached=true`` on the same directory finds the running one instead of starting
another, and it shows in the Ray dashboard's Actors page. The daemon's output goes to
``<watch dir>/daemon.log``; the supervisor's restarts to ``<watch dir>/supervisor.jsonl``.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path

NAMESPACE = "rayft"
CONFIG_FILE = ".supervisor_config.yaml"  # the resolved config (may hold secrets): mode 0600
#: exit code 2 = config error or another daemon holds the lock (the previous incarnation's child
#: still exiting): retried this many times, then the supervisor gives up
MAX_CODE2 = 5


def actor_name(watch_dir: str | Path) -> str:
    return "rayft-watch-" + hashlib.sha1(str(Path(watch_dir).resolve()).encode()).hexdigest()[:12]


def _die_with_parent() -> None:
    """In the daemon child: SIGKILL when the supervisor process dies (Linux prctl)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _append(path: Path, rec: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())


class WatchSupervisor:
    """Ray actor body (see the module docstring). Created by ``start_detached``."""

    def __init__(self, watch_dir: str, env: dict, backoff_s: float = 1.0, backoff_max_s: float = 60.0):
        self.dir = Path(watch_dir)
        self.env = env
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.proc = None
        self.starts = 0
        self.state = "starting"
        self.thread = threading.Thread(target=self._loop, name="rayft-watch-supervisor", daemon=True)
        self.thread.start()

    def _spawn(self):
        import subprocess

        cmd = [sys.executable, "-m", "rayft.cli", "watch", "--config", str(self.dir / CONFIG_FILE)]
        log = open(self.dir / "daemon.log", "ab")
        try:
            return subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent, cwd=str(self.dir))
        finally:
            log.close()

    def _loop(self) -> None:
        import ray

        code2, failures = 0, 0
        events = self.dir / "supervisor.jsonl"
        _append(events, {"time": time.time(), "event": "supervisor_started", "pid": os.getpid()})
        while True:
            self.proc = self._spawn()
            self.starts += 1
            self.state = "running"
            _append(events, {"time": time.time(), "event": "daemon_started", "pid": self.proc.pid,
                             "supervisor_pid": os.getpid()})
            rc = self.proc.wait()
            _append(events, {"time": time.time(), "event": "daemon_exited", "pid": self.proc.pid, "code": rc})
            if rc == 0:
                self.state = "finished"
                break
            if rc == 2:
                code2 += 1
                if code2 >= MAX_CODE2:
                    self.state = "gave up: the daemon exits with code 2 (config error or a second daemon); see daemon.log"
                    break
            else:
                code2 = 0
            failures += 1
            self.state = f"restarting after exit code {rc}"
            time.sleep(min(self.backoff_max_s, self.backoff_s * 2 ** min(failures - 1, 10)))
        _append(events, {"time": time.time(), "event": "supervisor_done", "state": self.state})
        try:
            ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
        except Exception:
            os._exit(0)

    def status(self) -> dict:
        return {"state": self.state, "daemon_pid": self.proc.pid if self.proc else None,
                "supervisor_pid": os.getpid(), "daemon_starts": self.starts}


def start_detached(cfg, watch_dir: Path) -> str:
    """Write the resolved config (0600), create (or find) the supervisor actor; returns its name."""
    import ray
    import yaml
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .. import _env
    from ..config import ConfigError, to_dict
    from ..storage import atomic_write_bytes

    if not (cfg.ray.address or os.environ.get("RAY_ADDRESS") or ray.is_initialized()):
        # a Ray started by this command would end with it, and the detached actor with that Ray
        raise ConfigError("watch.detached=true needs a running Ray cluster to outlive this command: start "
                          "one (cluster/start_local_head.sh or `ray start --head`) and set RAY_ADDRESS or "
                          "ray.address, or submit with `ray job submit`")
    d = to_dict(cfg)
    d["watch"]["detached"] = False
    d["watch"]["dir"] = str(watch_dir)
    watch_dir.mkdir(parents=True, exist_ok=True)
    path = watch_dir / CONFIG_FILE
    old = os.umask(0o077)
    try:
        atomic_write_bytes(path, yaml.safe_dump(d, sort_keys=False, allow_unicode=True).encode())
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    _env.ray_start(cfg.ray.address, cfg.ray.num_cpus or None)
    name = actor_name(watch_dir)
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address)
    actor_cls = ray.remote(WatchSupervisor).options(
        name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, num_cpus=0,
        max_restarts=-1, max_concurrency=4,
        scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False),
        runtime_env={"env_vars": _env.worker_env()})
    actor = actor_cls.remote(str(watch_dir), env)
    st = ray.get(actor.status.remote(), timeout=120)
    print(f"[rayft] watch: detached daemon {name} (namespace {NAMESPACE}) on this node, supervisor pid "
          f"{st['supervisor_pid']}; log {watch_dir / 'daemon.log'}; stop with: rayft watch stop dir={watch_dir}",
          file=sys.stderr)
    return name


def find(watch_dir: str | Path):
    """The running supervisor actor of ``watch_dir`` (needs Ray connected), or None."""
    import ray

    try:
        return ray.get_actor(actor_name(watch_dir), namespace=NAMESPACE)
    except ValueError:
        return None
