"""state.json / control.json and the dashboard, without Ray."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayft.cli import main
from rayft.watch.report import dashboard_html, svg_chart
from rayft.watch.state import State, daemon_lock, pending_commands, send_command


def test_state_round_trip_and_commands(tmp_path):
    s = State(tmp_path)
    s.line("en")["paused"] = True
    assert s.next_cycle_id() == "c0001" and s.next_cycle_id() == "c0002"
    s.save()
    s2 = State(tmp_path)
    assert s2.data["cycle_seq"] == 2 and s2.line("en")["paused"] and s2.line("zh")["consumed"] == []
    assert not list(tmp_path.glob(".state.json.*"))  # temp file renamed away
    c1 = send_command(tmp_path, "pause", "en")
    c2 = send_command(tmp_path, "stop")
    assert [c["id"] for c in pending_commands(s2)] == [c1["id"], c2["id"]]
    s2.data["control_done"].append(c1["id"])
    assert [c["cmd"] for c in pending_commands(s2)] == ["stop"]
    with pytest.raises(ValueError):
        send_command(tmp_path, "reboot")


def test_cli_control_words(tmp_path, capsys):
    assert main(["watch", "pause", "en", f"dir={tmp_path}"]) == 2  # not a watch dir yet
    State(tmp_path).save()
    assert main(["watch", "pause", "en", f"dir={tmp_path}"]) == 0
    assert main(["watch", "resume", f"dir={tmp_path}"]) == 0
    assert main(["watch", "stop", "en", f"dir={tmp_path}"]) == 2
    cmds = json.loads((tmp_path / "control.json").read_text())["commands"]
    assert [(c["cmd"], c["line"]) for c in cmds] == [("pause", "en"), ("resume", "")]
    assert main(["watch", "status", f"dir={tmp_path}"]) == 2  # no status.json yet
    (tmp_path / "status.json").write_text(json.dumps({"lines": {}}))
    capsys.readouterr()
    assert main(["watch", "status", f"dir={tmp_path}"]) == 0
    assert len(json.loads(capsys.readouterr().out)["pending_commands"]) == 2


def test_one_daemon_per_directory(tmp_path):
    from rayft.config import ConfigError
    with daemon_lock(tmp_path):
        with pytest.raises(ConfigError, match="another `rayft watch` daemon"):
            with daemon_lock(tmp_path):
                pass


def test_dashboard_renders_lines_chart_and_escapes():
    assert "no scores yet" in svg_chart([])
    svg = svg_chart([("c0001 promote", 6.8, True), ("c0002 reject", 6.9, False)])
    assert svg.count("<circle") == 2 and 'class="pro"' in svg and 'class="rej"' in svg
    status = {"watch_dir": "/w", "activity": "idle", "updated_local": "now", "window": "02:00-06:00", "pid": 1,
              "recent_alerts": [{"time": "t", "event": "failed", "line": "en", "text": "<script>x</script>"}],
              "lines": {"en": {"champion": "v1_ab12", "previous": None, "paused": True, "pause_reason": "boom",
                               "waiting": "", "in_progress": False, "queue": {"curate_runs": ["r0002"], "new_rows": 7},
                               "history": [{"cycle": "c0001", "decision": "promote", "version": "v1_ab12",
                                            "golden": {"loss": 6.8, "similarity": None}}],
                               "cycle": {"id": "c0001", "stages": ["full"], "new_rows": 10, "decision": "promote",
                                         "steps": [{"name": "full", "status": "done", "attempt": 1, "wall_s": 3.2}],
                                         "reasons": ["PASS golden"]}}}}
    html = dashboard_html(status)
    assert 'http-equiv="refresh"' in html and "v1_ab12" in html and "paused</b>: boom" in html
    assert "<script>x" not in html and "&lt;script&gt;" in html and "3.2 s" in html and "7 new train rows" in html


def test_training_waits_outside_the_window_and_over_resource_thresholds(tmp_path):
    import datetime as dt

    from rayft.config import load
    from rayft.watch.config import ALIASES, WatchConfig
    from rayft.watch.daemon import Watcher

    now = dt.datetime.now()
    closed = f"{(now + dt.timedelta(hours=2)):%H:00}-{(now + dt.timedelta(hours=3)):%H:00}"
    base = ["input=x", f"dir={tmp_path}", "alerts.slack_webhook_env=", "alerts.telegram_token_env="]
    w = Watcher(load(WatchConfig, None, [*base, f"watch.window={closed}"], ALIASES), tmp_path)
    assert w.blocked("en").startswith("waiting for the training window") and w.blocked("en")
    w = Watcher(load(WatchConfig, None, [*base, "resources.max_memory_percent=0.01"], ALIASES), tmp_path)
    assert w.blocked("en").startswith("resources: node memory")
    w.cfg.resources.max_memory_percent = 100.0
    w.cfg.resources.min_disk_free_gb = 0.0
    assert w.blocked("en") == ""
    w.alerts.close()
    events = [json.loads(x)["event"] for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert events == ["window", "resources", "resources_ok"]  # one alert per transition


def test_detached_without_a_running_cluster_is_one_line(tmp_path):
    """A Ray this command started would die with it, and the detached daemon with it: refused."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    res = subprocess.run([sys.executable, "-m", "rayft.cli", "watch", "--config", "configs/watch.yaml",
                          f"input={tmp_path / 'in'}", f"dir={tmp_path / 'w'}", "watch.detached=true"],
                         cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "watch.detached=true needs a running Ray cluster" in err[0], res.stderr
    assert not (tmp_path / "w").exists()  # nothing written before the refusal
