"""`rayft frames embed` end to end on the session Ray: Parquet contents, bad-file accounting,
resume from completion markers, one failing episode, fail-fast model checks, CLI."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rayft.cli import STAGES, main
from rayft.config import ConfigError, load
from rayft.data.formats import DataError
from rayft.testing import frames as synth
from rayft.frames.config import FramesConfig
from rayft.frames.decode import reason_kind
from rayft.frames.run import episode_id, run_embed

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
# ViT-S-32 at 64 px: 2x2 patches, a few ms per frame on CPU; random weights (offline)
TINY = ["model.name=ViT-S-32", "model.pretrained=", "model.image_size=64", "embed.batch_size=16",
        "embed.decode_batch_size=8", "embed.progress=false"]
REJECT_KINDS = {"empty file", "not an image", "corrupt or truncated", "too many pixels", "unreadable"}


def frames_cfg(inp, out, *overrides) -> FramesConfig:
    return load(FramesConfig, REPO / "configs" / "frames.yaml",
                [f"input={inp}", f"output={out}", *TINY, *overrides], STAGES["frames embed"][3])


def read_embeddings(out: Path):
    return pq.read_table(sorted((out / "embeddings").rglob("*.parquet"))).to_pandas()


def part_mtimes(out: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in (out / "embeddings").rglob("*.parquet")}


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames_in")
    synth.write_episodes(root, n_episodes=3, frames_per_episode=30, n_characters=3, size=(96, 64), seed=1)
    synth.write_bad_frames(root)
    os.symlink(root / "episode_bad" / "missing_target.jpg", root / "episode_bad" / "m_dangling.jpg")
    truth = synth.read_truth(root)
    truth.append({"path": str(root / "episode_bad" / "m_dangling.jpg"), "episode": "episode_bad",
                  "character": -1, "expected": "unreadable"})
    return root, truth


@pytest.fixture(scope="module")
def embedded(ray_session, frames, tmp_path_factory):
    root, truth = frames
    out = tmp_path_factory.mktemp("frames_emb") / "emb"
    assert run_embed(frames_cfg(root, out)) == str(out)
    return root, truth, out


def test_parquet_has_one_row_per_good_frame(embedded):
    _, truth, out = embedded
    df = read_embeddings(out)
    assert {"path", "episode", "frame_index", "width", "height", "embedding"} <= set(df.columns)
    good = {r["path"] for r in truth if r["expected"] not in REJECT_KINDS}
    assert len(df) == len(good) and set(df["path"]) == good
    emb = np.stack(df["embedding"].to_numpy())
    assert emb.shape == (len(good), 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    syn = df[df.episode != "episode_bad"]  # (the bad episode holds several gray copies of one frame)
    syn_emb = np.stack(syn["embedding"].to_numpy())
    assert len(np.unique(syn_emb.round(5), axis=0)) == len(syn)  # each frame its own vector
    assert (syn.width == 96).all() and (syn.height == 64).all()
    ep0 = syn[syn.episode == "episode_000"].sort_values("frame_index")
    assert ep0.frame_index.tolist() == list(range(30)) and ep0.path.str.endswith("frame_000000.jpg").iloc[0]
    model = json.loads((out / "model.json").read_text())
    assert model["name"] == "ViT-S-32" and model["image_size"] == 64


def test_bad_files_are_counted_with_reasons(embedded):
    _, truth, out = embedded
    rep = json.loads((out / "report.json").read_text())
    want_rej = [r for r in truth if r["expected"] in REJECT_KINDS]
    assert rep["frames_found"] == len(truth) and rep["frames_rejected"] == len(want_rej)
    assert rep["frames_embedded"] == len(truth) - len(want_rej)
    assert rep["reject_reasons"] == {k: sum(r["expected"] == k for r in want_rej) for k in REJECT_KINDS}
    assert rep["converted_modes"] == {"L": 1, "LA": 1, "RGBA": 1, "P": 1, "CMYK": 1, "I;16": 1}
    assert rep["ignored_files_by_extension"] == {".txt": 1}
    assert rep["episodes_done_this_run"] == 4 and rep["episodes_incomplete"] == [] and rep["error"] == ""
    rejects = {json.loads(line)["path"]: json.loads(line)["reason"] for line in open(out / "rejects.jsonl")}
    assert {p: reason_kind(r) for p, r in rejects.items()} == {r["path"]: r["expected"] for r in want_rej}


def test_rerun_skips_finished_episodes(embedded):
    root, _, out = embedded
    before = part_mtimes(out)
    run_embed(frames_cfg(root, out))
    rep = json.loads((out / "report.json").read_text())
    assert rep["episodes_skipped_done"] == 4 and rep["frames_processed_this_run"] == 0
    assert part_mtimes(out) == before


def test_new_episode_and_missing_marker_are_the_only_work(embedded):
    root, truth, out = embedded
    synth.write_episodes(root / "season2", n_episodes=1, frames_per_episode=12, n_characters=3,
                         size=(96, 64), seed=5)
    (out / "_done" / (episode_id("episode_001") + ".json")).unlink()  # as if killed mid-episode
    before = part_mtimes(out)
    run_embed(frames_cfg(root, out))
    rep = json.loads((out / "report.json").read_text())
    assert rep["episodes_skipped_done"] == 3 and rep["episodes_done_this_run"] == 2
    assert rep["frames_processed_this_run"] == 30 + 12
    after = part_mtimes(out)
    redone = {p for p in after if p not in before or after[p] != before[p]}
    assert {p.parent.name for p in redone} == {episode_id("episode_001"), episode_id("season2/episode_000")}
    df = read_embeddings(out)
    assert (df.episode == "season2/episode_000").sum() == 12 and (df.episode == "episode_001").sum() == 30


def test_one_failing_episode_does_not_stop_the_others(embedded):
    root, _, out = embedded
    synth.write_episodes(root / "season3", n_episodes=2, frames_per_episode=10, n_characters=3,
                         size=(96, 64), seed=6)
    blocked = out / "embeddings" / episode_id("season3/episode_000")
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_text("a file where the episode's folder should go")  # its write fails
    with pytest.raises(DataError, match="1 of 2 episodes did not finish"):
        run_embed(frames_cfg(root, out))
    rep = json.loads((out / "report.json").read_text())
    assert rep["episodes_incomplete"] == ["season3/episode_000"]
    assert list(rep["episodes_failed"]) == ["season3/episode_000"]
    assert (out / "_done" / (episode_id("season3/episode_001") + ".json")).exists()
    blocked.unlink()
    run_embed(frames_cfg(root, out))  # the rerun retries only the failed one
    rep = json.loads((out / "report.json").read_text())
    assert rep["episodes_done_this_run"] == 1 and rep["frames_processed_this_run"] == 10


def test_cluster_and_export_chain_on_real_embeddings(embedded, tmp_path):
    """The W4 chain through the CLI. Random CLIP weights: structure is checked, not quality."""
    _, _, out = embedded
    cfg = ["--config", str(REPO / "configs" / "frames.yaml")]
    assert main(["frames", "cluster", *cfg, f"input={out}", f"output={tmp_path / 'cl'}",
                 "cluster.min_cluster_size=5", "cluster.min_samples=3", "cluster.pca_dims=8"]) == 0
    labels = pq.read_table(tmp_path / "cl" / "labels.parquet")
    assert labels.num_rows == len(read_embeddings(out)) and (tmp_path / "cl" / "_SUCCESS").exists()
    assert main(["frames", "export", *cfg, f"input={tmp_path / 'cl'}", f"output={tmp_path / 'sets'}",
                 "export.min_size=5", "export.mode=hardlink"]) == 0
    meta = json.loads((tmp_path / "sets" / "clusters.json").read_text())
    n_big = sum(c["size"] >= 5 for c in json.loads((tmp_path / "cl" / "clusters.json").read_text())["cluster_list"])
    assert n_big >= 1 and meta["exported"] == n_big and meta["tags_note"] == ""
    assert (tmp_path / "sets" / "overview.png").exists() and (tmp_path / "sets" / "contact_sheets").is_dir()
    src = Path(next(iter(meta["clusters"]))["medoid"])
    linked = [p for p in (tmp_path / "sets" / "cluster_000").glob(f"*__{src.name}")
              if p.stat().st_ino == src.stat().st_ino]
    assert len(linked) == 1  # hardlink mode: the medoid is the same file, not a copy


def test_other_model_into_the_same_output_is_refused(embedded):
    root, _, out = embedded
    with pytest.raises(ConfigError, match="mixing models"):
        run_embed(frames_cfg(root, out, "model.seed=7", "embed.max_episodes=1"))


def test_bad_weights_fail_fast_with_a_clear_message(embedded, tmp_path, capsys):
    root, _, _ = embedded
    args = ["frames", "embed", "--config", str(REPO / "configs" / "frames.yaml"), f"input={root}",
            f"output={tmp_path / 'o'}", "model.name=ViT-S-32"]
    assert main([*args, "model.pretrained=no_such_tag"]) == 2
    assert "neither a pretrained tag of ViT-S-32" in capsys.readouterr().err
    assert main([*args, "model.name=ViT-B-32", "model.pretrained=openai", f"model.cache_dir={tmp_path}"]) == 2
    assert "cannot fetch weights for ViT-B-32" in capsys.readouterr().err  # offline: no hub


def test_local_checkpoint_is_loaded(tmp_path):
    """model.pretrained=<file> goes through open_clip's real weight loading (what the actors run)."""
    from safetensors.torch import save_file

    from rayft.frames.config import ModelSection
    from rayft.frames.embed import check_model, encode_images, load_clip

    src = load_clip(ModelSection(name="ViT-S-32", image_size=64, seed=11))
    ckpt = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, ckpt)
    cfg = ModelSection(name="ViT-S-32", image_size=64, seed=0, pretrained=str(ckpt))
    assert check_model(cfg) == ""  # a file is accepted without the random-weights warning
    x = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    loaded, seed0 = load_clip(cfg), load_clip(ModelSection(name="ViT-S-32", image_size=64, seed=0))
    assert np.allclose(encode_images(loaded, x), encode_images(src, x), atol=1e-5)
    assert not np.allclose(encode_images(seed0, x), encode_images(src, x), atol=1e-2)


def test_cli_help_lists_every_key(capsys):
    with pytest.raises(SystemExit) as e:
        main(["frames", "embed", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for key in ("model.pretrained", "embed.batch_size", "embed.concurrency", "cluster.min_cluster_size",
                "cluster.shard_size", "export.mode", "input -> embed.input"):
        assert key in text


def test_config_file_loads():
    cfg = load(FramesConfig, REPO / "configs" / "frames.yaml")
    assert cfg.model.name == "ViT-B-32" and cfg.model.pretrained == "laion2b_s34b_b79k"
    assert cfg.cluster.min_cluster_size == 25 and cfg.cluster.method == "sharded"
    assert 0 < cfg.embed.actor_num_cpus < 1 and cfg.export.min_size == 25
    with pytest.raises(ConfigError, match="unknown config key"):
        load(FramesConfig, REPO / "configs" / "frames.yaml", ["embed.batchsize=3"])


def test_job_file_joins_the_running_cluster(ray_session, frames, tmp_path):
    """jobs/frames_embed.py as `ray job submit` runs it: RAY_ADDRESS set, joins that cluster."""
    import subprocess
    import sys

    root, _ = frames
    (tmp_path / "in" / "ep").mkdir(parents=True)
    for p in sorted((root / "episode_002").iterdir())[:5]:
        (tmp_path / "in" / "ep" / p.name).write_bytes(p.read_bytes())
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
           "PYTHONPATH": str(REPO / "src")}
    res = subprocess.run([sys.executable, str(REPO / "jobs" / "frames_embed.py"), "--config",
                          str(REPO / "configs" / "frames.yaml"), f"input={tmp_path / 'in'}",
                          f"output={tmp_path / 'out'}", *TINY], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == str(tmp_path / "out")
    assert "Started a local Ray instance" not in res.stderr  # joined, did not start its own
    assert len(read_embeddings(tmp_path / "out")) == 5
