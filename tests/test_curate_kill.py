"""kill -9 a curate run (CLI / jobs script in a subprocess on the session Ray), rerun:
no row lost, none duplicated, same result as an uninterrupted run."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rayft.testing import curate_score as score
from rayft.testing import pairs as synth

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[1]


# `rayft curate` with Ledger.commit held back: prints PAUSED once the outputs are published, then waits to be killed.
_PAUSED_CLI = """import sys, time
from rayft.curate.ledger import Ledger
def commit(self, run_id, *a, **k):
    print(f"PAUSED: outputs of {run_id} in place, ledger not committed", flush=True)
    time.sleep(120)
Ledger.commit = commit
from rayft.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _cmd(inp: Path, out: Path, addr: str, job: bool = False, paused: bool = False) -> list[str]:
    entry = ([str(REPO / "jobs" / "curate.py")] if job else ["-c", _PAUSED_CLI, "curate"] if paused
             else ["-m", "rayft.cli", "curate"])
    return [sys.executable, *entry, "--config", str(REPO / "configs" / "curate.yaml"), f"input={inp}",
            f"output={out}", f"ray.address={addr}"]


def _run(inp, out, addr, job=False) -> str:
    p = subprocess.run(_cmd(inp, out, addr, job), cwd=REPO, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def dataset(ray_session, tmp_path_factory):
    base = tmp_path_factory.mktemp("curate_kill")
    info = synth.generate(base / "gen", n=1200, seed=21, n_files=4)
    files = sorted(Path(info["data"]).iterdir())
    addr = ray_session.get_runtime_context().gcs_address
    ref_in, ref = _two_step_inbox(base / "ref", files)
    t0 = time.time()
    _run(ref_in, ref, addr)  # the uninterrupted reference, also timing one subprocess run
    return files, addr, score.output_keys(ref), time.time() - t0


def _curate_in_process(inbox: Path, out: Path) -> str:
    from rayft.cli import STAGES
    from rayft.config import load
    from rayft.curate.config import CurateConfig
    from rayft.curate.run import run_curate
    return run_curate(load(CurateConfig, REPO / "configs" / "curate.yaml", [f"input={inbox}", f"output={out}"],
                           STAGES["curate"][3]))


def _two_step_inbox(base: Path, files) -> tuple[Path, Path]:
    """r0001 committed over the first two files; the other two are new."""
    inbox, out = base / "inbox", base / "out"
    inbox.mkdir(parents=True)
    for f in files[:2]:
        shutil.copy(f, inbox / f.name)
    assert _curate_in_process(inbox, out).startswith("curated r0001")
    for f in files[2:]:
        shutil.copy(f, inbox / f.name)
    return inbox, out


def test_kill_between_outputs_and_ledger_commit(dataset, tmp_path):
    files, addr, ref_state, _ = dataset
    inbox, out = _two_step_inbox(tmp_path, files)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(_cmd(inbox, out, addr, paused=True), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.time() + 180
        for line in proc.stdout:  # wait until the outputs are in place and the ledger is not committed
            if line.startswith("PAUSED:") or time.time() > deadline:
                break
        assert list(out.glob("*/*/part-r0002-*.parquet"))  # r0002 outputs are visible ...
        assert [r["run"] for r in json.loads((out / "_ledger" / "ledger.json").read_text())["runs"]] == ["r0001"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert json.loads((out / "report.json").read_text())["run"] == "r0002"  # published, not committed ...
    from rayft.curate.ledger import Ledger
    Ledger(out).gc()  # (what the rerun does first)
    assert json.loads((out / "report.json").read_text())["run"] == "r0001" and not list(out.rglob("*r0002*"))
    # ... the rerun (through the jobs script) discards them and redoes r0002
    assert _run(inbox, out, addr, job=True).startswith("curated r0002")
    assert score.output_keys(out) == ref_state


def test_kill_at_random_points(dataset, tmp_path):
    files, addr, ref_state, run_s = dataset
    inbox, out = _two_step_inbox(tmp_path, files)
    rng = random.Random(int(os.environ.get("RAYFT_KILL_SEED", "0")))
    for _ in range(2):
        proc = subprocess.Popen(_cmd(inbox, out, addr), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, max(1.0, run_s)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    msg = _run(inbox, out, addr)
    assert msg.startswith(("curated r0002", "nothing to do"))  # a kill after the commit leaves nothing to do
    kept, rej = score.output_keys(out)
    assert len(kept) == len(set(kept)) and len(rej) == len(set(rej))  # nothing duplicated
    assert (kept, rej) == ref_state  # nothing lost
