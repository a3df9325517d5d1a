"""`rayft frames cluster` with the per-shard neighbour searches as Ray tasks (issue 16 item 4):
the same labels as the in-process path, every shard searched exactly once, and the executor
switch does not redo a finished clustering. On the session Ray (2 CPUs)."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from rayft.frames.cluster import hdbscan_scale
from rayft.testing.embeddings import PlantedSpec, planted
from test_cluster_run import cluster_cli, write_planted

pytestmark = [pytest.mark.ray]


@pytest.mark.timeout(300)
def test_ray_tasks_give_the_in_process_labels(ray_session):
    x, _ = planted(PlantedSpec(n=6000, dim=64, n_clusters=12, min_size=100, seed=1))
    local, li = hdbscan_scale.cluster(x, min_cluster_size=25, min_samples=10, shard_size=1500)
    runner = hdbscan_scale.RayShards(cpus=0.5, max_in_flight=3)
    remote, ri = hdbscan_scale.cluster(x, min_cluster_size=25, min_samples=10, shard_size=1500, tasks=runner)
    assert li["shards"] >= 4 and runner.ran == ri["shards"] == li["shards"]  # each shard once
    assert ri["knn_executor"].startswith(f"ray tasks ({li['shards']} shards, 0.5 CPU each, 3 at once")
    assert li["knn_executor"] == "in-process"
    assert np.array_equal(local, remote)  # deterministic searches: identical clustering
    assert ri["guest_copies"] == li["guest_copies"] and ri["inf_bridges"] == li["inf_bridges"] == 0
    assert [s["home"] for s in ri["shard_stats"]] == [s["home"] for s in li["shard_stats"]]


@pytest.mark.timeout(300)
def test_cli_ray_tasks_on_matches_off_and_the_switch_is_not_a_new_clustering(ray_session, tmp_path, capsys):
    write_planted(tmp_path / "emb", n=3000)
    assert cluster_cli(tmp_path / "emb", tmp_path / "off", "cluster.shard_size=1000", "cluster.ray_tasks=off") == 0
    assert cluster_cli(tmp_path / "emb", tmp_path / "on", "cluster.shard_size=1000", "cluster.ray_tasks=on",
                       "cluster.task_cpus=0.5") == 0
    on = json.loads((tmp_path / "on" / "clusters.json").read_text())
    off = json.loads((tmp_path / "off" / "clusters.json").read_text())
    assert on["hdbscan"]["knn_executor"].startswith("ray tasks") and off["hdbscan"]["knn_executor"] == "in-process"
    assert on["hdbscan"]["shards"] >= 2
    a = pq.read_table(tmp_path / "on" / "labels.parquet")
    b = pq.read_table(tmp_path / "off" / "labels.parquet")
    assert a.column("path").to_pylist() == b.column("path").to_pylist()
    assert a.column("label").to_pylist() == b.column("label").to_pylist()
    assert on["clusters"] == off["clusters"] and on["noise"] == off["noise"]
    capsys.readouterr()
    t0 = (tmp_path / "on" / "labels.parquet").stat().st_mtime_ns
    assert cluster_cli(tmp_path / "emb", tmp_path / "on", "cluster.shard_size=1000", "cluster.ray_tasks=off") == 0
    assert "nothing to do" in capsys.readouterr().err  # where it runs is not what it computes
    assert (tmp_path / "on" / "labels.parquet").stat().st_mtime_ns == t0


_OWN_RAY = r"""
import os, sys, json, psutil
sys.path.insert(0, sys.argv[3])
import ray
from test_cluster_run import cluster_cli
before = {p.pid for p in psutil.Process().children(recursive=True)}
rc = cluster_cli(sys.argv[1], sys.argv[2], "cluster.shard_size=1000", "cluster.ray_tasks=on", "cluster.task_cpus=0.5")
left = [p.name() for p in psutil.Process().children(recursive=True) if p.pid not in before and p.is_running()
        and p.status() != psutil.STATUS_ZOMBIE]
print(json.dumps({"rc": rc, "initialized": ray.is_initialized(), "left": left}))
"""


@pytest.mark.timeout(300)
def test_cli_starts_its_own_ray_for_the_searches_and_shuts_it_down(tmp_path):
    """Without a Ray to join, ray_tasks=on starts a local one; it is shut down (in the background
    once the last search is in) and no Ray process of it is left when the command returns."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    write_planted(tmp_path / "emb", n=3000)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    p = subprocess.run([sys.executable, "-c", _OWN_RAY, str(tmp_path / "emb"), str(tmp_path / "own"),
                        str(Path(__file__).parent)], capture_output=True, text=True, timeout=280, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res == {"rc": 0, "initialized": False, "left": []}
    assert "started a local Ray" in p.stderr
    info = json.loads((tmp_path / "own" / "clusters.json").read_text())["hdbscan"]
    assert info["knn_executor"].startswith("ray tasks") and info["shards"] >= 2
