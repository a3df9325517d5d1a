"""What a user sees (issue 21 item 1): a tiny 10-step `rayft train` (a CLI subprocess with its
own local Ray, output to a pipe as in a job log) prints rayft's lines only, with the run
directory last; Ray's chatter is in <run dir>/logs/ (driver.log, and the Ray session's logs
linked as ray_session)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

RAY_CHATTER = ("Reporting training result", "Failed to query Ray Train Controller", "Token authentication",
               "execution finished", "Starting execution of Dataset", "Running Dataset", "PreemptionWatcher",
               "core_worker.cc", "(RayTrainWorker", "(TrainController", "(SplitCoordinator", "pid=")


def test_train_console_is_rayfts_own(tmp_path):
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    env.pop("RAYFT_VERBOSE", None)
    cmd = [str(BIN / "rayft"), "train", "--config", "configs/tiny.yaml", f"run.dir={tmp_path}", "run.name=quiet",
           "train.max_steps=10", "generate.prompt="]
    p = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=360)
    out = p.stdout
    assert p.returncode == 0, out[-4000:]
    lines = [ln for ln in out.splitlines() if ln.strip()]
    run_dir = tmp_path / "quiet"
    assert lines[-1] == str(run_dir), lines[-5:]
    assert any(ln.startswith("[rayft] loss ") for ln in lines), lines  # the summary
    assert any(ln.startswith("[rayft] run ") for ln in lines), lines   # the plan/headline
    bad = [ln for ln in lines if any(c in ln for c in RAY_CHATTER)]
    assert not bad, bad
    assert "\r" not in out  # a pipe gets periodic lines, not a redrawn bar
    assert len(lines) <= 20, "\n".join(lines)
    logs = run_dir / "logs"
    assert (logs / "driver.log").is_file()
    assert (logs / "ray_session").is_symlink() and (logs / "ray_session").resolve().is_dir()
    print(f"{len(lines)} console lines:\n" + "\n".join(lines))
