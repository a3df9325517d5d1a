"""`ray job submit` against a real head started by cluster/start_local_head.sh (token auth on),
running jobs/train.py: the same function as `rayft train`."""
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
    try:
        yield env, f"http://127.0.0.1:{dash}"
    finally:
        subprocess.run(["bash", str(REPO / "cluster/stop_local_head.sh")], env=env, timeout=60)
        shutil.rmtree(head_dir, ignore_errors=True)


def test_job_submit_runs_train(head, tmp_path):
    env, address = head
    env = dict(env, RAY_ADDRESS=address)
    no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    denied = subprocess.run([str(BIN / "ray"), "job", "list"], env=no_token, capture_output=True, text=True,
                            timeout=120)
    assert denied.returncode != 0  # token auth is on: no token, no access
    cmd = [str(BIN / "ray"), "job", "submit", "--working-dir", str(REPO), "--",
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
