"""``rayft watch status | pause [line] | resume [line] | stop dir=<watch dir>``.

Commands are appended to ``control.json`` in the watch directory (atomic write under a lock);
the daemon applies them at its next poll (within ~1 s while it sleeps, or after the step it
is running). ``status`` prints ``status.json`` (what the daemon last wrote) with the state of
pending commands; it works whether or not the daemon runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import ConfigError, load
from .config import ALIASES, WatchConfig
from .state import COMMANDS, pending_commands, send_command, State

ACTIONS = ("status", *COMMANDS)


def watch_dir_of(args) -> Path:
    over = [o for o in args.overrides if "=" in o]
    if args.config or over:
        try:
            cfg = load(WatchConfig, args.config, [*over, "watch.input=-"] if not any(
                o.startswith(("input=", "watch.input=")) for o in over) else over, ALIASES)
        except ConfigError as e:
            raise SystemExit(f"rayft watch {args.action}: error: {e}") from None
        return Path(cfg.watch.dir).expanduser().resolve()
    return Path("runs/watch").resolve()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="rayft watch", description="control a running `rayft watch` daemon "
                                 "through files in its watch directory")
    ap.add_argument("action", choices=ACTIONS)
    ap.add_argument("overrides", nargs="*", metavar="[line] key=value",
                    help="pause/resume: an optional line (e.g. en; default all); dir=<watch dir>")
    ap.add_argument("--config", "-c", help="the daemon's YAML config (for watch.dir)")
    args = ap.parse_args(argv)
    try:
        d = watch_dir_of(args)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    line = next((o for o in args.overrides if "=" not in o), "")
    if args.action != "status" and not (d / "state.json").exists():
        print(f"rayft watch {args.action}: error: {d} is not a watch directory (no state.json)", file=sys.stderr)
        return 2
    if args.action == "status":
        p = d / "status.json"
        if not p.exists():
            print(f"rayft watch status: error: no status.json in {d} (has the daemon run there?)", file=sys.stderr)
            return 2
        status = json.loads(p.read_text(encoding="utf-8"))
        status["pending_commands"] = pending_commands(State(d))
        print(json.dumps(status, indent=2, ensure_ascii=False))
        return 0
    if args.action == "stop" and line:
        print("rayft watch stop: error: stop takes no line (it stops the daemon); use pause <line>", file=sys.stderr)
        return 2
    c = send_command(d, args.action, line)
    print(f"{args.action}{' ' + line if line else ''}: queued as {c['id']} in {d / 'control.json'}")
    return 0
