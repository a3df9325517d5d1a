"""`rayft frames embed` on a real multi-node Ray cluster (issue 16): the node running the CLIP
actor dies mid-run, and the run (or its rerun) ends with every frame embedded or rejected once,
none duplicated, none lost, the same vectors as a fault-free run.

Cluster (tests/multinode.py): 0-CPU head + node_a and node_b with 1 CPU each: decode tasks
(0.5 CPU) spread over both nodes, the one embedding actor (0.5 CPU) on one of them. Once the
first embedded batch has reached the driver, the actor's node is SIGKILLed (raylet, object
store, actor, decode tasks and their blocks) and a 1-CPU replacement joins. Ray Data restarts
the actor and rebuilds lost blocks; whatever does not finish is what the rerun does (episodes
have completion markers).
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rayft.cli import STAGES
from rayft.config import load
from rayft.data.formats import DataError
from rayft.frames.config import FramesConfig
from rayft.testing import frames as synth

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[1]
TINY = ["model.name=ViT-S-32", "model.pretrained=", "model.image_size=64", "embed.batch_size=16",
        "embed.decode_batch_size=8", "embed.progress=false"]
REJECT_KINDS = {"empty file", "not an image", "corrupt or truncated", "too many pixels", "unreadable"}


def embed(inp: Path, out: Path) -> str:
    from rayft.frames.run import run_embed

    return run_embed(load(FramesConfig, REPO / "configs" / "frames.yaml", [f"input={inp}", f"output={out}", *TINY],
                          STAGES["frames embed"][3]))


def embeddings(out: Path) -> dict:
    """path -> vector, asserting no path appears twice."""
    t = pq.read_table(sorted((out / "embeddings").rglob("*.parquet")), columns=["path", "embedding"]).to_pylist()
    paths = [r["path"] for r in t]
    assert len(paths) == len(set(paths)), "a frame was written twice"
    return {r["path"]: np.asarray(r["embedding"], np.float32) for r in t}


def test_node_loss_mid_embed_loses_and_duplicates_nothing(multinode, tmp_path):
    import rayft.frames.run as frames_run

    root = tmp_path / "frames"
    synth.write_episodes(root, n_episodes=4, frames_per_episode=60, n_characters=3, size=(96, 64), seed=3)
    synth.write_bad_frames(root)
    t0 = time.time()
    embed(root, tmp_path / "ref")
    ref_s = time.time() - t0
    ref = embeddings(tmp_path / "ref")
    truth = synth.read_truth(root)
    good = {r["path"] for r in truth if r["expected"] not in REJECT_KINDS}

    from multinode import WatchedBar

    fault: dict = {}
    first = threading.Event()
    real_progress = frames_run._progress  # the run's own frame counter: closes when the pipeline ends

    def kill_actor_node():
        if first.wait(180):
            node = next((n for n in multinode.actor_nodes("ClipEmbedder").values()  # Ray Data's MapWorker
                         if n in multinode.nodes), None)
            fault.update(node=node, at=time.time())
            if node:
                multinode.remove(node, graceful=False)
                multinode.add("node_c", cpus=1)  # the replacement machine joins

    killer = threading.Thread(target=kill_actor_node, daemon=True)
    out = tmp_path / "faulted"
    t0 = time.time()
    killer.start()
    frames_run._progress = lambda total, enabled: WatchedBar(real_progress(total, enabled), first, fault)
    try:
        embed(root, out)
        first_try = "finished"
    except DataError as e:  # some episodes did not finish: the rerun does them
        first_try = f"incomplete: {str(e)[:200]}"
    finally:
        frames_run._progress = real_progress
    killer.join(timeout=120)
    assert fault.get("node") and fault["at"] < fault["bar_end"], \
        f"the actor's node was not removed while frames were embedded: nothing was tested ({fault})"
    if first_try != "finished":
        embed(root, out)  # retries only the unfinished episodes
    got = embeddings(out)
    print(f"frames embed with {fault['node']} (the CLIP actor's) removed {fault['at'] - t0:.1f} s into the run, "
          f"{fault['bar_end'] - fault['at']:.1f} s before its pipeline ended (reference run {ref_s:.1f} s): "
          f"first try {first_try}; {len(got)} frames embedded")
    assert set(got) == set(ref)  # none lost, none extra
    assert set(got) == good
    worst = max(float(np.abs(got[p] - ref[p]).max()) for p in ref)
    assert worst < 1e-4, worst  # the restarted actor has the same (seeded) weights
    rep = json.loads((out / "report.json").read_text())
    rep_ref = json.loads((tmp_path / "ref" / "report.json").read_text())
    assert rep["frames_embedded"] == rep_ref["frames_embedded"] == len(ref)
    assert rep["frames_rejected"] == rep_ref["frames_rejected"] > 0
    assert not rep["episodes_incomplete"]
    assert rep["frames_found"] == rep["frames_embedded"] + rep["frames_rejected"]  # frames in = kept + rejected
