"""``state.json`` (the daemon's restart point) and ``control.json`` (commands to it).

Both are rewritten whole with ``storage.atomic_write_json`` (temp + fsync + rename), so a
``kill -9`` leaves the previous complete version. The daemon saves the state before and after
every step that has an effect outside it (a training stage, an evaluation, a registration,
a promotion), so a restart redoes at most the interrupted step - and each step is
idempotent: a train run resumes from its own last checkpoint, an eval.json is reused when it
is complete and still against the current champion, a registration is looked up by the run's
artifact digest before adding.

Ingestion has no bookkeeping here: the curate ledger (``curated/_ledger``) says which files
were ingested; a line's state only lists the curate runs it has trained on.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import time
import uuid
from pathlib import Path

from ..storage import atomic_write_json

STATE, CONTROL = "state.json", "control.json"
COMMANDS = ("pause", "resume", "stop")


def new_line_state() -> dict:
    return {"paused": False, "pause_reason": "", "waiting": "", "consumed": [], "cycle": None,
            "cycles_done": 0, "cycles_since_full": 0, "last_gain": None, "last_train_end": None,
            "history": []}


class State:
    def __init__(self, watch_dir: str | Path):
        self.dir = Path(watch_dir)
        self.path = self.dir / STATE
        self.data = {"version": 1, "cycle_seq": 0, "lines": {}, "control_done": [], "started": None,
                     "updated": None}
        if self.path.exists():
            self.data.update(json.loads(self.path.read_text(encoding="utf-8")))

    def line(self, name: str) -> dict:
        return self.data["lines"].setdefault(name, new_line_state())

    def next_cycle_id(self) -> str:
        self.data["cycle_seq"] += 1
        return f"c{self.data['cycle_seq']:04d}"

    def save(self) -> None:
        self.data["updated"] = time.time()
        atomic_write_json(self.path, self.data)


@contextlib.contextmanager
def daemon_lock(watch_dir: Path):
    """One daemon per watch directory (released by the OS when the process dies, even kill -9)."""
    watch_dir.mkdir(parents=True, exist_ok=True)
    with open(watch_dir / ".daemon.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            from ..config import ConfigError
            raise ConfigError(f"another `rayft watch` daemon holds {watch_dir / '.daemon.lock'}") from None
        yield


def send_command(watch_dir: str | Path, cmd: str, line: str = "") -> dict:
    """Append a command to control.json (atomically, under a lock); the daemon applies it at
    its next poll. Returns the command."""
    if cmd not in COMMANDS:
        raise ValueError(f"unknown command {cmd!r}; expected one of {COMMANDS}")
    d = Path(watch_dir)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".control.lock", "a") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        cmds = read_commands(d)
        c = {"id": uuid.uuid4().hex[:12], "cmd": cmd, "line": line, "time": time.time()}
        atomic_write_json(d / CONTROL, {"commands": (cmds + [c])[-200:]})
    return c


def read_commands(watch_dir: str | Path) -> list[dict]:
    p = Path(watch_dir) / CONTROL
    if not p.exists():
        return []
    try:
        return json.loads(p.read_text(encoding="utf-8")).get("commands", [])
    except (OSError, ValueError):
        return []


def pending_commands(state: State) -> list[dict]:
    done = set(state.data.get("control_done", []))
    return [c for c in read_commands(state.dir) if c.get("id") not in done]
