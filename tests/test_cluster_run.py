"""`rayft frames cluster` on Parquet embeddings made elsewhere (no Ray): contract columns,
quality against planted truth through streaming PCA + the sharded path, rerun no-op."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import adjusted_rand_score

from rayft.cli import main
from rayft.testing.embeddings import PlantedSpec, planted

REPO = Path(__file__).resolve().parents[1]


def write_planted(root: Path, n: int = 6000, fixed: bool = True, episode: bool = True, seed: int = 1):
    """512-d CLIP-like planted embeddings in 3 Parquet files; returns truth by path."""
    x, y = planted(PlantedSpec(n=n, dim=512, n_clusters=12, min_size=100, spread=(0.25, 0.4), seed=seed))
    root.mkdir(parents=True)
    paths = [f"/frames/ep{i % 7}/f{i:06d}.jpg" for i in range(n)]
    for k, s in enumerate(range(0, n, n // 3)):
        sl = slice(s, s + n // 3)
        emb = (pa.FixedSizeListArray.from_arrays(pa.array(x[sl].ravel()), 512) if fixed
               else pa.array(x[sl].tolist(), type=pa.list_(pa.float32())))
        cols = {"path": paths[sl], "embedding": emb}
        if episode:
            cols["episode"] = [p.split("/")[2] for p in paths[sl]]
        pq.write_table(pa.table(cols), root / f"part-{k}.parquet")
    return dict(zip(paths, y))


def cluster_cli(inp, out, *extra) -> int:
    return main(["frames", "cluster", "--config", str(REPO / "configs" / "frames.yaml"),
                 f"input={inp}", f"output={out}", *extra])


def test_cluster_cli_matches_planted_truth_on_the_sharded_path(tmp_path):
    truth = write_planted(tmp_path / "emb")
    assert cluster_cli(tmp_path / "emb", tmp_path / "out", "cluster.shard_size=1500") == 0
    t = pq.read_table(tmp_path / "out" / "labels.parquet")
    assert {"path", "label"} <= set(t.column_names) and t.num_rows == len(truth)
    labels = t.column("label").to_numpy()
    want = np.array([truth[p] for p in t.column("path").to_pylist()])
    assert adjusted_rand_score(want, labels) >= 0.9
    meta = json.loads((tmp_path / "out" / "clusters.json").read_text())
    assert meta["points"] == len(truth) and meta["clusters"] == labels.max() + 1 == len(meta["cluster_list"])
    assert meta["hdbscan"]["method"] == "sharded" and meta["hdbscan"]["shards"] >= 4
    assert meta["hdbscan"]["max_call_points"] <= 1500 and meta["pca"]["dims_out"] == 32
    assert meta["noise"] == int((labels == -1).sum()) > 0
    c0 = meta["cluster_list"][0]
    assert c0["size"] == (labels == 0).sum() and c0["episodes"] == 7 and c0["medoid"] in truth
    assert truth[c0["medoid"]] == np.bincount(want[labels == 0][want[labels == 0] >= 0]).argmax()


def test_rerun_is_a_noop_and_changed_settings_recluster(tmp_path, capsys):
    write_planted(tmp_path / "emb", n=1500, fixed=False, episode=False)
    assert cluster_cli(tmp_path / "emb", tmp_path / "out") == 0
    labels = tmp_path / "out" / "labels.parquet"
    t0 = labels.stat().st_mtime_ns
    assert cluster_cli(tmp_path / "emb", tmp_path / "out") == 0
    assert "nothing to do" in capsys.readouterr().err and labels.stat().st_mtime_ns == t0
    assert cluster_cli(tmp_path / "emb", tmp_path / "out", "cluster.min_cluster_size=40") == 0
    assert labels.stat().st_mtime_ns != t0
    assert json.loads((tmp_path / "out" / "clusters.json").read_text())["min_cluster_size"] == 40
    assert set(pq.read_table(labels).column("episode").to_pylist()) == {""}  # no episode column given


def test_missing_columns_and_empty_input_are_clear_errors(tmp_path, capsys):
    (tmp_path / "emb").mkdir()
    pq.write_table(pa.table({"file": ["a"], "vec": [[1.0, 2.0]]}), tmp_path / "emb" / "x.parquet")
    assert cluster_cli(tmp_path / "emb", tmp_path / "out") == 2
    assert "missing column(s) ['embedding', 'path']" in capsys.readouterr().err
    (tmp_path / "none").mkdir()
    assert cluster_cli(tmp_path / "none", tmp_path / "out") == 2
    assert "no Parquet files" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["cluster.min_cluster_size=1", "cluster.shard_size=10", "cluster.method=kmeans",
                                 "cluster.ray_tasks=maybe", "cluster.task_cpus=0", "cluster.max_tasks=-1",
                                 "cluster.refine_rounds=-1", "cluster.refine_rounds=two"])
def test_bad_cluster_settings_are_refused(tmp_path, capsys, key):
    assert cluster_cli(tmp_path, tmp_path / "out", key) == 2
    err = capsys.readouterr().err
    assert "cluster" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
