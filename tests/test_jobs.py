"""`ray job submit` against a real head started by cluster/start_local_head.sh (token auth on),
running jobs/train.py: the same function as `rayft train`; and one jobs/ file per CLI stage."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _http_status(url: str, authorization: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": authorization} if authorization else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture(scope="module")
def head():
    """A separate single-node head on loopback (short temp dir: Ray's socket paths are length-limited)."""
    head_dir = tempfile.mkdtemp(prefix="rfh", dir="/tmp")
    gcs, dash, client, agent, agent_grpc, metrics, rt_agent = _free_ports(7)
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", RAYFT_HEAD_DIR=head_dir,
               RAYFT_GCS_PORT=str(gcs), RAYFT_DASHBOARD_PORT=str(dash), RAYFT_NUM_CPUS="2",
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    start = subprocess.run(
        ["bash", str(REPO / "cluster/start_local_head.sh"), f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rt_agent}"],
        env=env, capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stdout + start.stderr
    # the pids the script recorded: its own session's processes, alive now
    recorded = [int(ln.split()[0]) for ln in Path(head_dir, "head.pids").read_text().splitlines()
                if not ln.startswith("sid ")]
    assert sum(_running(p) for p in recorded) >= 3, recorded  # gcs_server, raylet, dashboard...
    # a bystander whose command line names the head dir (what the old `pgrep -f` matched)
    bystander = subprocess.Popen(["bash", "-c", "sleep 600", f"{head_dir}/tmp"])
    try:
        yield env, f"http://127.0.0.1:{dash}"
    finally:
        stop = subprocess.run(["bash", str(REPO / "cluster/stop_local_head.sh")], env=env, timeout=60,
                              capture_output=True, text=True)
        alive = [p for p in recorded if _running(p)]
        survived = bystander.poll() is None
        bystander.kill()
        bystander.wait()
        shutil.rmtree(head_dir, ignore_errors=True)
        assert stop.returncode == 0 and not alive, (stop.stdout + stop.stderr, alive)
        assert survived, "stop_local_head.sh killed a process it did not start"


def test_job_submit_runs_train(head, tmp_path):
    env, address = head
    env = dict(env, RAY_ADDRESS=address)
    no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    denied = subprocess.run([str(BIN / "ray"), "job", "list"], env=no_token, capture_output=True, text=True,
                            timeout=120)
    # token auth is on: no token, no access - refused for authentication (not a crash or a connection error)
    assert denied.returncode != 0
    assert "Authentication required" in denied.stdout + denied.stderr or \
        "Authentication failed" in denied.stdout + denied.stderr, (denied.stdout + denied.stderr)[-2000:]
    assert _http_status(f"{address}/api/jobs/") == 401  # no token
    assert _http_status(f"{address}/api/jobs/", "Bearer " + secrets.token_hex(16)) == 403  # wrong token
    assert _http_status(f"{address}/api/jobs/", "Bearer " + env["RAY_AUTH_TOKEN"]) == 200
    # the Jobs page conventions (README "Ray dashboard"): a readable submission id, stage + run dir as metadata
    sid = f"rayft-train-viajob-{time.strftime('%Y%m%d-%H%M%S')}"
    meta = {"rayft_stage": "train", "run_dir": str(tmp_path / "viajob")}
    cmd = [str(BIN / "ray"), "job", "submit", "--working-dir", str(REPO), "--submission-id", sid,
           "--metadata-json", json.dumps(meta), "--",
           "python", "jobs/train.py", "--config", "configs/tiny.yaml", f"run.dir={tmp_path}", "run.name=viajob",
           "train.max_steps=4", "train.log_every=2", "train.checkpoint_every=4", "scaling.num_workers=1",
           "generate.prompt="]
    t0 = time.time()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=540)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "succeeded" in out.lower(), out[-2000:]
    run_dir = tmp_path / "viajob"
    assert str(run_dir) in out
    rep = json.loads((run_dir / "report.json").read_text())
    assert rep["steps"] == 4 and (run_dir / "adapter/adapter_model.safetensors").exists()
    assert rep["wall_s"] < time.time() - t0 + 1
    req = urllib.request.Request(f"{address}/api/jobs/{sid}", headers={"Authorization": "Bearer " + env["RAY_AUTH_TOKEN"]})
    with urllib.request.urlopen(req, timeout=30) as r:  # what the dashboard's Jobs page lists
        job = json.loads(r.read())
    assert job["submission_id"] == sid and job["status"] == "SUCCEEDED"
    assert job["metadata"] == meta and job["entrypoint"].startswith("python jobs/train.py")


def _job_file(stage: str) -> Path:
    """jobs/<stage>.py, jobs/<group>_<step>.py for `rayft frames embed`...; one registry.py for its actions."""
    head, _, step = stage.partition(" ")
    return REPO / "jobs" / (f"{head}.py" if not step or head == "registry" else f"{head}_{step}.py")


def test_one_job_file_per_cli_stage(monkeypatch, capsys):
    """Every CLI stage has its jobs/ entrypoint, and it runs the CLI's own parser and function
    (its --help is the stage's --help). Pure: no Ray starts."""
    import runpy

    from rayft.cli import STAGES, main

    for stage in STAGES:
        path = _job_file(stage)
        assert path.exists(), f"{stage}: no {path.relative_to(REPO)}"
        if stage.startswith("registry "):
            continue  # one file for every registry action: the action is its first argument
        assert "main([" + ", ".join(f'"{w}"' for w in stage.split()) + ", *sys.argv[1:]])" in path.read_text()
        with pytest.raises(SystemExit):
            main([*stage.split(), "--help"])
        want = capsys.readouterr().out
        monkeypatch.setattr(sys, "argv", [str(path), "--help"])
        with pytest.raises(SystemExit):
            runpy.run_path(str(path), run_name="__main__")
        assert capsys.readouterr().out == want, stage
