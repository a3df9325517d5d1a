"""Experiment tracking: one ``Tracker`` in front of small adapters for TensorBoard, MLflow and
Weights & Biases (``tracking: [tensorboard, mlflow, wandb]``, none by default).

Everything is logged from the driver, never from the training workers: the metrics are the
rows rank 0 appends to ``<run dir>/metrics.jsonl`` (so "rank 0 only" holds, and the workers
neither import the tracking libraries nor count their memory in the peak RSS they report),
followed while the run trains by ``Follower`` and caught up once more when it ends. One
tracked run spans worker restarts and guard rollbacks; its ids are kept in
``<run dir>/tracking.json`` so a resumed run (same run.name) continues the same tracked run.

    tr = start(cfg, run_dir, resumed=...)   # params (resolved config, secrets masked)
    tr.follow(run_dir / "metrics.jsonl")     # per-step metrics + guard events, live
    ...
    tr.finish(run_dir, ok)                   # last rows, report.json / loss.png, summary, status

A backend that fails to start refuses the run (the user asked for it); one that fails later
is dropped with one warning line and training goes on.
"""
from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any, Protocol

from ..config import mask_secrets, to_dict
from ..storage import atomic_write_json, read_jsonl

__all__ = ["Tracker", "Backend", "start", "log_eval", "flat_params", "row_metrics", "Follower"]


class Backend(Protocol):
    """What every adapter implements (tensorboard_backend.py, mlflow_backend.py, wandb_backend.py)."""

    name: str

    def params(self, flat: dict[str, str], nested: dict) -> None: ...
    def metrics(self, values: dict[str, float], step: int) -> None: ...
    def event(self, tag: str, text: str, step: int) -> None: ...
    def artifact(self, path: Path) -> None: ...
    def summary(self, values: dict[str, Any]) -> None: ...
    def close(self, ok: bool) -> None: ...
    def state(self) -> dict: ...   # ids to resume the same tracked run (tracking.json)


def flat_params(nested: dict, prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": "0.0001"}`` (lists/dicts as JSON text)."""
    out: dict[str, str] = {}
    for k, v in nested.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat_params(v, key + "."))
        else:
            out[key] = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
    return out


def row_metrics(row: dict) -> tuple[dict[str, float], int]:
    """The numbers of one metrics.jsonl row (training or validation) and its step."""
    out: dict[str, float] = {}
    for k in ("loss", "loss_avg", "lr", "tokens_per_s", "useful_tokens_per_s", "val_loss", "epoch"):
        v = row.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    for rank, mb in enumerate(row.get("peak_rss_mb") or []):
        out[f"peak_rss_mb/rank{rank}"] = float(mb)
    return out, int(row.get("step", 0))


class Tracker:
    """The backends of one tracked run; every call is guarded (see the module docstring)."""

    def __init__(self, backends: list[Backend], state_path: Path | None = None, skip_until: float = 0.0):
        self.backends = list(backends)
        self.state_path = state_path
        self.skip_until = skip_until       # rows at or before this time were logged by an earlier launch
        self.last_time = skip_until
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._follower: Follower | None = None

    def __bool__(self) -> bool:
        return bool(self.backends)

    def _each(self, what: str, fn) -> None:
        for b in list(self.backends):
            try:
                fn(b)
            except Exception as e:  # noqa: BLE001 - a tracker must never stop training
                self.backends.remove(b)
                print(f"[rayft] warning: tracking: {b.name} failed ({what}: {type(e).__name__}: "
                      f"{str(e).splitlines()[0][:200] if str(e) else ''}); continuing without it",
                      file=sys.stderr)

    def params(self, cfg_dict: dict, prefix: str = "") -> None:
        nested = {prefix.rstrip("."): cfg_dict} if prefix else cfg_dict
        flat = flat_params(nested)
        self._each("params", lambda b: b.params(flat, nested))

    def rows(self, rows: list[dict]) -> None:
        """Log the rows of metrics.jsonl not logged yet (training/validation rows and guard events)."""
        with self._lock:
            for row in rows:
                key = json.dumps(row, sort_keys=True, default=str)
                t = float(row.get("time") or 0)
                if key in self._seen or (t and t <= self.skip_until):
                    continue
                self._seen.add(key)
                self.last_time = max(self.last_time, t)
                self._row(row)

    def _row(self, row: dict) -> None:
        step = int(row.get("step", 0))
        if "event" in row:  # the training guard's (rollback, stop, rising validation loss)
            text = f"{row['event']}: {row.get('message', '')}"
            self._each("event", lambda b: b.event("guard", text, step))
            self._each("metrics", lambda b: b.metrics({f"guard/{row['event']}": 1.0}, step))
            return
        values, step = row_metrics(row)
        if values:
            self._each("metrics", lambda b: b.metrics(values, step))
        if isinstance(row.get("memory_stop"), dict):
            st = row["memory_stop"]
            text = (f"memory_stop: rank {st.get('rank')} at {st.get('rss_mb', 0):.0f} MB RSS "
                    f"(budget {st.get('budget_gb')} GB x {st.get('stop_fraction')})")
            self._each("event", lambda b: b.event("guard", text, step))

    def follow(self, path: Path, interval: float = 2.0) -> None:
        """Log rows as rank 0 appends them, in a daemon thread, until ``finish``."""
        if self.backends and self._follower is None:
            self._follower = Follower(self, Path(path), interval)
            self._follower.start()

    def stop_following(self) -> None:
        if self._follower is not None:
            self._follower.stop_evt.set()
            self._follower.join(timeout=30)
            self._follower = None

    def artifacts(self, paths: list[Path]) -> None:
        for p in paths:
            if Path(p).is_file():
                self._each("artifact", lambda b, p=p: b.artifact(Path(p)))

    def summary(self, values: dict[str, Any]) -> None:
        self._each("summary", lambda b: b.summary(values))

    def finish(self, run_dir: Path, ok: bool, extra: dict | None = None) -> None:
        """Catch up with metrics.jsonl, log report.json's numbers and the run's files, close."""
        if not self.backends:
            return
        self.stop_following()
        run_dir = Path(run_dir)
        self.rows(read_jsonl(run_dir / "metrics.jsonl"))
        report = _read_json(run_dir / "report.json")
        summary = {k: report[k] for k in ("loss_first", "loss_last", "val_loss_start", "val_loss", "tokens_per_s",
                                          "steps", "finished", "wall_s", "train_rows", "val_rows",
                                          "rows_rejected", "error") if report.get(k) is not None}
        for sub in ("adapter", "model"):
            if (run_dir / sub).is_dir():
                summary[sub] = str((run_dir / sub).resolve())  # the adapter reference (files stay in the run dir)
        summary["run_dir"] = str(run_dir.resolve())
        summary.update(extra or {})
        self.summary(summary)
        self.artifacts([run_dir / "report.json", run_dir / "report.html", run_dir / "loss.png",
                        run_dir / "config.yaml"])
        self.save_state()
        self._each("close", lambda b: b.close(ok))
        self.backends = []

    def save_state(self, extra: dict | None = None) -> None:
        if self.state_path is None:
            return
        if extra:
            self.state_extra = extra
        state: dict = {"last_time": self.last_time, **getattr(self, "state_extra", {})}
        for b in self.backends:
            try:
                state[b.name] = b.state()
            except Exception:  # noqa: BLE001
                pass
        atomic_write_json(self.state_path, state)


class Follower(threading.Thread):
    """Reads metrics.jsonl every ``interval`` seconds and hands new rows to the tracker."""

    def __init__(self, tracker: Tracker, path: Path, interval: float):
        super().__init__(daemon=True, name="rayft-tracking")
        self.tracker, self.path, self.interval = tracker, path, interval
        self.stop_evt = threading.Event()

    def run(self) -> None:
        while not self.stop_evt.wait(self.interval):
            try:
                self.tracker.rows(read_jsonl(self.path))
            except Exception:  # noqa: BLE001 - a torn read; the next poll (or finish) catches up
                pass


def _read_json(p: Path) -> dict:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def start(cfg: Any, run_dir: Path, run_name: str | None = None, resumed: bool = False,
          kind: str = "train", tags: dict[str, str] | None = None, params_prefix: str = "",
          params_of: Any = None) -> Tracker:
    """A Tracker with the backends ``cfg.tracking`` lists, its params logged (under
    ``params_prefix``). ``resumed``: the run directory holds an earlier launch of this run (or,
    for eval, the candidate's training); the tracked runs in its tracking.json continue."""
    names = list(dict.fromkeys(getattr(cfg, "tracking", None) or []))
    if kind == "sweep":  # the parent of the trials' runs: MLflow only (TensorBoard/W&B group the trials)
        names = [n for n in names if n == "mlflow"]
    if not names:
        return Tracker([])
    run_dir = Path(run_dir)
    state_path = run_dir / "tracking.json"
    prev = _read_json(state_path) if resumed else {}
    name = run_name or run_dir.name
    tags = {"rayft.stage": kind, "rayft.run_dir": str(run_dir.resolve()), **(tags or {})}
    sweep = _read_json(run_dir.parent.parent / "tracking.json") if kind == "train" else {}
    if sweep.get("sweep"):  # a `rayft sweep` trial (<sweep dir>/trials/<id>): a child of the sweep's run
        tags["rayft.sweep"] = sweep["sweep"]
        if (sweep.get("mlflow") or {}).get("run_id"):
            tags["mlflow.parentRunId"] = sweep["mlflow"]["run_id"]
    backends: list[Backend] = []
    from ..config import ConfigError
    for n in names:
        try:
            if n == "tensorboard":
                from .tensorboard_backend import TensorBoardBackend
                backends.append(TensorBoardBackend(run_dir / "tb"))
            elif n == "mlflow":
                from .mlflow_backend import MlflowBackend
                backends.append(MlflowBackend(cfg.mlflow, run_dir, name, tags, prev.get("mlflow")))
            elif n == "wandb":
                from .wandb_backend import WandbBackend
                backends.append(WandbBackend(cfg.wandb, run_dir, name, tags, prev.get("wandb"),
                                             group=sweep.get("sweep")))
        except ImportError as e:
            for b in backends:
                b.close(False)
            raise ConfigError(f"tracking: {n} needs the '{e.name}' package: pip install 'rayft[tracking]'") from None
        except ConfigError:
            for b in backends:
                b.close(False)
            raise
        except Exception as e:  # noqa: BLE001 - e.g. the MLflow server cannot be reached
            for b in backends:
                b.close(False)
            msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            raise ConfigError(f"tracking: cannot start {n}: {msg}") from None
    tr = Tracker(backends, state_path, float(prev.get("last_time") or 0.0))
    tr.params(mask_secrets(to_dict(params_of or cfg), type(params_of or cfg)), params_prefix)
    tr.save_state({"sweep": name} if kind == "sweep" else None)
    print("[rayft] tracking: " + " | ".join(b.where() if hasattr(b, "where") else b.name for b in tr.backends),
          file=sys.stderr)
    return tr


def numbers(d: Any, prefix: str) -> dict[str, float]:
    """Every finite number in a nested dict as ``prefix/a/b`` -> value."""
    out: dict[str, float] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(numbers(v, f"{prefix}/{k}"))
    elif isinstance(d, (int, float)) and not isinstance(d, bool) and d == d and abs(d) != float("inf"):
        out[prefix] = float(d)
    return out


def log_eval(cfg: Any, candidate: Path, report: dict, eval_json: Path) -> None:
    """`rayft eval` with ``tracking=[...]``: the scores (``eval/<model>/<split>/<metric>``), the gate
    decision and its reasons, and eval.json, logged to the candidate's tracked run (continued
    from its tracking.json; a new run named after it when it has none)."""
    if not getattr(cfg, "tracking", None):
        return
    candidate = Path(candidate).expanduser()
    tr = start(cfg, candidate, candidate.name, resumed=True, kind="eval", params_prefix="eval")
    step = int(_read_json(candidate / "report.json").get("steps") or 0)
    values = numbers(report.get("metrics") or {}, "eval")
    values["eval/gate_accept"] = 1.0 if report.get("accept") else 0.0
    tr._each("metrics", lambda b: b.metrics(values, step))
    for line in report.get("reasons") or []:
        tr._each("event", lambda b, line=line: b.event("gate", line, step))
    tr.summary({"gate_decision": report.get("decision"), "gate_accept": bool(report.get("accept")),
                "champion": report.get("champion"), "registered": report.get("registered")})
    tr.artifacts([Path(eval_json)])
    tr.save_state()
    tr._each("close", lambda b: b.close(True))
    tr.backends = []
