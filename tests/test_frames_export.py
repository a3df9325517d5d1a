"""`rayft frames export` (no Ray): cluster folders with frames + captions, clusters.json,
contact sheets, overview, small clusters skipped and listed, link modes, resume."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rayft.cli import main
from rayft.frames.cluster.run import summarize
from rayft.testing import frames as synth
from rayft.frames.decode import decode_batch
from rayft.frames.embed import ClipEmbedder
from rayft.frames.run import EpisodeWriter, discover

REPO = Path(__file__).resolve().parents[1]
MODEL = {"name": "ViT-S-32", "pretrained": "", "image_size": 64, "seed": 0}


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    """Frames embedded in-process (same decode + actor class the pipeline uses), then a
    cluster directory whose labels are the planted characters, character 2 cut to 3 frames."""
    base = tmp_path_factory.mktemp("export")
    synth.write_episodes(base / "in", n_episodes=2, frames_per_episode=30, n_characters=3,
                         size=(96, 64), seed=3, background_frac=0.1)
    truth = {r["path"]: r["character"] for r in synth.read_truth(base / "in")}
    eps, _, _ = discover(base / "in", ["jpg", "png", "webp"])
    emb_dir = base / "emb"
    writer = EpisodeWriter(emb_dir, {e: len(p) for e, p in eps.items()}, rows_per_file=1000)
    embedder = ClipEmbedder(MODEL, threads=1)
    for ep, paths in eps.items():
        batch = {"path": np.array(paths, dtype=object), "episode": np.array([ep] * len(paths), dtype=object),
                 "frame_index": np.arange(len(paths), dtype=np.int32)}
        writer.add(embedder(decode_batch(batch, 64, 50_000_000, 16)))
    (emb_dir / "model.json").write_text(json.dumps(MODEL))
    t = pq.read_table(sorted(emb_dir.rglob("*.parquet")))
    paths = t.column("path").to_pylist()
    labels = np.array([truth[p] for p in paths])
    two = np.flatnonzero(labels == 2)
    labels[two[3:]] = -1  # character 2 keeps 3 frames: below export.min_size
    z = np.stack(t.column("embedding").to_numpy(zero_copy_only=False))
    cl = base / "clusters"
    cl.mkdir()
    pq.write_table(pa.table({"path": paths, "episode": t.column("episode"), "label": labels}), cl / "labels.parquet")
    clusters = summarize(z, labels, t.column("path").combine_chunks(), t.column("episode").combine_chunks())
    (cl / "clusters.json").write_text(json.dumps({"input": str(emb_dir), "cluster_list": clusters}))
    return base, cl, labels, paths


def export_cli(inp, out, *extra) -> int:
    return main(["frames", "export", "--config", str(REPO / "configs" / "frames.yaml"),
                 f"input={inp}", f"output={out}", "export.min_size=5", "export.sheet_samples=9",
                 "export.thumb_size=48", *extra])


def test_export_writes_one_training_folder_per_character(clustered):
    base, cl, labels, paths = clustered
    out = base / "sets"
    assert export_cli(cl, out) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["cluster_000", "cluster_001", "contact_sheets"]
    meta = json.loads((out / "clusters.json").read_text())
    assert meta["skipped"] == [{"id": 2, "size": 3, "reason": "size 3 < export.min_size 5"}]
    assert meta["exported"] == 2 and meta["failed"] == [] and meta["tags_note"] == ""
    assert meta["noise_frames"] == int((labels == -1).sum())
    vocab = {t.removeprefix("a ").removeprefix("an ") for t in meta["clusters"][0]["tags"]}
    for c in meta["clusters"]:
        folder = out / c["folder"]
        members = [p for p, lab in zip(paths, labels) if lab == c["id"]]
        images = sorted(p for p in folder.iterdir() if p.suffix in (".jpg", ".png", ".webp"))
        captions = sorted(folder.glob("*.txt"))
        assert len(images) == len(captions) == len(members) == c["size"] == c["exported_frames"]
        assert {p.stem for p in images} == {p.stem for p in captions}
        for cap in captions:
            parts = cap.read_text().strip().split(", ")
            assert parts[0] == f"char{c['id']:03d}" == c["trigger"] and len(parts) == 4
        src = {os.path.basename(p): Path(p).read_bytes() for p in members}
        for img in images:  # copy mode: byte-identical frames, named <episode>__<file>
            assert img.read_bytes() == src[img.name.split("__", 1)[1]]
        assert c["contact_sheet"] == f"contact_sheets/{c['folder']}.png"
        with Image.open(out / c["contact_sheet"]) as sheet:
            assert sheet.width >= 3 * 48 and sheet.height >= 48
        assert c["medoid"] in members and c["episodes"] == 2 and len(c["tags"]) == 5
    assert vocab  # tags came from the CLIP text tower
    with Image.open(out / "overview.png") as ov:
        assert ov.height >= 2 * 48


def test_rerun_resumes_and_symlink_mode_links(clustered):
    base, cl, _, _ = clustered
    out = base / "sets_link"
    assert export_cli(cl, out, "export.mode=symlink") == 0
    frames = [p for p in (out / "cluster_000").iterdir() if p.suffix not in (".txt", "")]
    assert frames and all(p.is_symlink() and Path(os.readlink(p)).exists() for p in frames)
    mtime = (out / "contact_sheets" / "cluster_000.png").stat().st_mtime_ns
    assert export_cli(cl, out, "export.mode=symlink") == 0
    meta = json.loads((out / "clusters.json").read_text())
    assert all(c.get("resumed") for c in meta["clusters"])
    assert (out / "contact_sheets" / "cluster_000.png").stat().st_mtime_ns == mtime


def test_one_unreadable_frame_does_not_stop_the_export(clustered, tmp_path):
    base, cl, labels, paths = clustered
    cl2 = tmp_path / "cl"
    cl2.mkdir()
    t = pq.read_table(cl / "labels.parquet")
    gone = tmp_path / "gone.jpg"
    bad = t.column("path").to_pylist()
    bad[int(np.flatnonzero(labels == 1)[0])] = str(gone)  # this frame vanished since clustering
    pq.write_table(t.set_column(0, "path", pa.array(bad)), cl2 / "labels.parquet")
    (cl2 / "clusters.json").write_text((cl / "clusters.json").read_text())
    assert export_cli(cl2, tmp_path / "out") == 0
    meta = json.loads((tmp_path / "out" / "clusters.json").read_text())
    c1 = next(c for c in meta["clusters"] if c["id"] == 1)
    assert c1["exported_frames"] == c1["size"] - 1 and str(gone) in c1["failed_frames"][0]
    assert meta["exported"] == 2


def test_export_needs_a_cluster_directory(tmp_path, capsys):
    assert export_cli(tmp_path, tmp_path / "out") == 2
    assert "run frames cluster first" in capsys.readouterr().err
