"""`rayft serve` / jobs/serve.py before Ray starts: the documented way to hand the API key to
a `ray job submit` job reaches the job's process, and a busy port is a one-line error."""
from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rayft.testing.net import free_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)



def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAYFT_API_KEY", "RAY_ADDRESS")}
    env.setdefault("PYTHONPATH", str(ROOT / "src"))
    return env | extra


def _documented_commands() -> list[str]:
    """Every `ray job submit ... jobs/serve.py ...` command line in README.md and jobs/serve.py."""
    out = []
    for f in (ROOT / "README.md", ROOT / "jobs" / "serve.py"):
        out += [ln.strip() for ln in f.read_text().splitlines()
                if "ray job submit" in ln and "jobs/serve.py" in ln]
    return out


def _job_process(cmd: str, client_env: dict) -> tuple[list[str], dict]:
    """(argv after `--`, env_vars) that a `ray job submit` command line gives the job's
    process: the shell expands it in the client's environment, as it would on submit."""
    expanded = subprocess.run(["bash", "-c", f"printf '%s\\0' {cmd.split(' ', 3)[3]}"], env=client_env,
                              capture_output=True, text=True, check=True).stdout.split("\0")[:-1]
    argv = expanded[expanded.index("--") + 1:]
    env_vars = {}
    if "--runtime-env-json" in expanded:
        env_vars = json.loads(expanded[expanded.index("--runtime-env-json") + 1]).get("env_vars", {})
    return argv, env_vars


def _run_job(argv: list[str], env_vars: dict, *extra: str) -> subprocess.CompletedProcess:
    assert argv[:2] == ["python", "jobs/serve.py"], argv
    return subprocess.run([sys.executable, "jobs/serve.py", *argv[2:], *extra], cwd=ROOT, env=_env(**env_vars),
                          capture_output=True, text=True, timeout=240)


def test_documented_job_command_passes_the_api_key(tmp_path):
    """README and jobs/serve.py show how the key reaches the job; the job process sees it.

    Before the fix the documented form was `RAYFT_API_KEY=... ray job submit ...`: the
    variable stays in the client's shell, the job ran with no key."""
    cmds = _documented_commands()
    assert len(cmds) >= 2, cmds
    by_env = [c for c in cmds if "--runtime-env-json" in c]
    by_file = [c for c in cmds if "api_key_file=" in c]
    assert by_env and by_file, cmds
    assert not any(re.match(r"^RAYFT_API_KEY=\S+ ray job submit", c) for c in cmds)
    reg = tmp_path / "empty-registry"
    reg.mkdir()
    # host=0.0.0.0 needs a key: the job fails on the empty registry (key seen) or on the bind check (not seen)
    over = (f"registry={reg}", "host=0.0.0.0", f"port={free_port()}")
    client = _env(RAYFT_API_KEY="documented-secret-17")
    for cmd in by_env:
        argv, env_vars = _job_process(cmd, client)
        assert env_vars == {"RAYFT_API_KEY": "documented-secret-17"}
        r = _run_job(argv, env_vars, *over)
        assert r.returncode == 2 and "exposes the server" not in r.stderr, r.stderr
        assert "no champion" in r.stderr and "documented-secret-17" not in r.stderr + r.stdout
        r = _run_job(argv, {}, *over)  # what the old command gave the job: no key
        assert r.returncode == 2 and "exposes the server" in r.stderr, r.stderr
    keyfile = tmp_path / "api_key"
    keyfile.write_text("file-secret-17\n")
    for cmd in by_file:
        argv, env_vars = _job_process(cmd, client)
        assert env_vars == {}
        argv = [a for a in argv if not a.startswith("api_key_file=")] + [f"api_key_file={keyfile}"]
        r = _run_job(argv, {}, *over)
        assert r.returncode == 2 and "no champion" in r.stderr and "exposes" not in r.stderr, r.stderr


def test_api_key_file_resolution(tmp_path, monkeypatch):
    from rayft.config import ConfigError, load
    from rayft.serve.config import ServeConfig

    monkeypatch.delenv("RAYFT_API_KEY", raising=False)
    f = tmp_path / "k"
    f.write_text("  s3cret \nsecond line\n")
    assert load(ServeConfig, None, [f"api_key_file={f}"]).resolved_key() == "s3cret"
    monkeypatch.setenv("RAYFT_API_KEY", "from-env")
    assert load(ServeConfig, None, [f"api_key_file={f}"]).resolved_key() == "from-env"
    monkeypatch.delenv("RAYFT_API_KEY")
    for bad in (tmp_path / "missing", tmp_path):
        with pytest.raises(ConfigError, match="api_key_file"):
            load(ServeConfig, None, [f"api_key_file={bad}"]).resolved_key()


def test_serve_port_in_use_is_one_line_before_ray(tmp_path):
    """Today: a 113-line traceback from Serve's proxy after ~10 s. Now: exit 2, one line, no Ray."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "rayft.cli", "serve", f"registry={tmp_path}", f"port={port}"],
                           cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
        took = time.monotonic() - t0
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "already in use" in lines[0] and str(port) in lines[0], r.stderr
    assert "Traceback" not in r.stderr and "ray" not in r.stderr.lower().replace("rayft", "")
    assert took < 60, took


def test_shell_quoting_of_documented_command_is_copy_pasteable():
    for cmd in _documented_commands():
        shlex.split(cmd)  # balanced quotes
