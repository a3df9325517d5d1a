"""`rayft curate` on a real multi-node Ray cluster (issue 16): a node dies mid-run, and the run
(or its rerun) completes with every row accounted for, none duplicated, none lost.

Cluster (tests/multinode.py): 0-CPU head + node_a and node_b with 1 CPU each, so curate's Ray
Data read/filter tasks run on both. The reference is the same input curated on the same
cluster without a fault; the faulted run loses node_b (SIGKILL: raylet, object store, its
tasks and the blocks they held) once the read+filter has delivered its first block (the
test checks the removal came before the read+filter ended), and a 1-CPU replacement joins. Ray Data retries the lost tasks and rebuilds lost blocks from lineage; if the run fails
anyway, the rerun resumes from the ledger (what a user does after a failure).
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from rayft.testing import curate_score as score
from rayft.testing import pairs as synth

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[1]


def curate(inp: Path, out: Path) -> str:
    from rayft.cli import STAGES
    from rayft.config import load
    from rayft.curate.config import CurateConfig
    from rayft.curate.run import run_curate

    return run_curate(load(CurateConfig, REPO / "configs" / "curate.yaml",
                           [f"input={inp}", f"output={out}", "data.chunk_mb=0.25"], STAGES["curate"][3]))


def test_node_loss_mid_curate_loses_and_duplicates_nothing(multinode, tmp_path):
    info = synth.generate(tmp_path / "gen", n=20000, seed=5, n_files=6)
    inp = Path(info["data"])
    t0 = time.time()
    first = curate(inp, tmp_path / "ref")
    ref_s = time.time() - t0
    assert first.startswith("curated r0001"), first
    ref = score.output_keys(tmp_path / "ref")
    rep = json.loads((tmp_path / "ref" / "report.json").read_text())
    assert rep["rows_in"] == rep["rows_kept"] + rep["rows_rejected"] == len(ref[0]) + len(ref[1])

    import rayft.progress as progress
    from multinode import WatchedBar

    fault: dict = {}
    first_block = threading.Event()  # the read+filter has produced its first block: Ray work under way
    real_bar = progress.bar  # curate's one bar counts the read+filter; it closes when that ends

    def kill_node_b():
        if first_block.wait(120):
            fault["at"] = time.time()
            multinode.remove("node_b", graceful=False)
            multinode.add("node_c", cpus=1)  # the replacement machine joins

    killer = threading.Thread(target=kill_node_b, daemon=True)
    out = tmp_path / "faulted"
    t0 = time.time()
    killer.start()
    try:
        progress.bar = lambda *a, **kw: WatchedBar(real_bar(*a, **kw), first_block, fault)
        msg = curate(inp, out)
    except Exception as e:  # noqa: BLE001 - the rerun below must finish it
        msg = f"failed: {type(e).__name__}: {str(e)[:300]}"
    finally:
        progress.bar = real_bar
    killer.join(timeout=120)
    assert "at" in fault and fault["at"] < fault["bar_end"], \
        f"the node was not removed while Ray read and filtered: nothing was tested ({fault})"
    if not msg.startswith("curated r0001"):
        msg = curate(inp, out)  # the rerun resumes from the ledger
        assert msg.startswith("curated r0001"), msg
    print(f"curate with node_b removed {fault['at'] - t0:.1f} s into the run, "
          f"{fault['bar_end'] - fault['at']:.1f} s before its read+filter ended (reference run {ref_s:.1f} s): "
          f"{msg[:160]}")
    got = score.output_keys(out)
    assert len(got[0]) == len(set(got[0])) and len(got[1]) == len(set(got[1]))  # nothing duplicated
    assert got == ref  # nothing lost: the same rows kept, the same rejects with the same reasons
    rep2 = json.loads((out / "report.json").read_text())
    assert (rep2["rows_in"], rep2["rows_kept"], rep2["rows_rejected"]) == \
        (rep["rows_in"], rep["rows_kept"], rep["rows_rejected"])
