"""`rayft frames train` (issue 15) on the tiny-sd preset: one Ray Tune trial per character.

One module-scoped run trains three tiny clusters (one of unreadable images) through the CLI;
the tests below read its outputs. The rerun and kill tests train again (a few steps each).
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

os.environ.setdefault("RAYFT_CACHE", str(Path(__file__).resolve().parents[1] / ".cache" / "rayft"))

COMMON = ["model.name=tiny-sd", "train.min_images=4", "train.resolution=32", "train.rank=4", "train.alpha=8",
          "train.lr=1e-3", "train.batch_size=2", "train.sample_prompts=[\"{trigger}\"]", "train.sample_seeds=[0]",
          "train.sample_steps=2", "train.log_every=2"]


def make_character(d: Path, color, n: int = 6, seed: int = 0, trigger: str = "char000") -> None:
    from PIL import Image

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        a = np.full((40, 48, 3), 235, np.uint8)
        x, y = rng.integers(0, 24, size=2)
        a[y:y + 16, x:x + 20] = color
        Image.fromarray(a).save(d / f"ep01__{i:04d}.png")
        (d / f"ep01__{i:04d}.txt").write_text(f"{trigger}, square\n")


def make_corrupt(d: Path, n: int = 6) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (d / f"ep02__{i:04d}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))  # truncated PNG
        (d / f"ep02__{i:04d}.txt").write_text("char002, broken\n")


def run_cli(*args: str) -> int:
    from rayft.cli import main

    return main(["frames", "train", *args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("frames_train")
    sets, out = root / "sets", root / "models"
    make_character(sets / "cluster_000", (220, 30, 30), trigger="char000")
    make_character(sets / "cluster_001", (30, 30, 220), seed=1, trigger="char001")
    make_corrupt(sets / "cluster_002")
    make_character(sets / "cluster_003", (30, 200, 30), n=2, trigger="char003")  # < min_images: skipped
    t0 = time.time()
    rc = run_cli(f"input={sets}", f"output={out}", "train.max_steps=12", "train.save_every=6", *COMMON)
    print(f"first run: {time.time() - t0:.1f} s")
    assert rc == 0
    return sets, out, json.loads((out / "pipeline_results.json").read_text())


def test_two_loras_one_failure_recorded(trained):
    sets, out, res = trained
    ch = res["characters"]
    assert {c: s["status"] for c, s in ch.items()} == {"cluster_000": "done", "cluster_001": "done",
                                                        "cluster_002": "failed"}
    assert "0 of 6 images usable" in ch["cluster_002"]["error"] and "ep02__0000.png" in ch["cluster_002"]["error"]
    assert "cluster_003" in res["skipped"] and res["totals"] == {"done": 2, "failed": 1, "pending": 0, "skipped": 1}
    for c in ("cluster_000", "cluster_001"):
        s, d = ch[c], out / c
        assert s["steps"] == 12 and s["final_loss"] > 0 and s["wall_time_s"] > 0 and s["error"] is None
        assert (d / f"{c}.safetensors").is_file() and (d / f"{c}-step000006.safetensors").is_file()
        assert (d / "adapter" / "pytorch_lora_weights.safetensors").is_file() and (d / "loss.png").is_file()
        assert (out / "lora_tests" / c / "grid.png").is_file()
        assert (out / "lora_tests" / c / "base_p0_s0.png").is_file() and (out / "lora_tests" / c / "lora_p0_s0.png").is_file()
        assert s["trigger"] == f"char{c[-3:]}"
    assert not (out / "cluster_002" / "cluster_002.safetensors").exists()


def test_loss_falls(trained):
    _, _, res = trained
    for c in ("cluster_000", "cluster_001"):
        s = res["characters"][c]
        # same images, noise and timesteps before and after training
        assert s["probe_loss_end"] < s["probe_loss_start"], s


def test_kohya_file_loads_and_changes_output(trained):
    import torch
    from safetensors import safe_open

    from rayft.frames.sd_model import load_pipeline, resolve_model

    _, out, _ = trained
    path = out / "cluster_000" / "cluster_000.safetensors"
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        alphas = {float(f.get_tensor(k)) for k in keys if k.endswith(".alpha")}
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    assert {k.rsplit(".", 2)[-2] + "." + k.rsplit(".", 1)[-1] if not k.endswith(".alpha") else "alpha"
            for k in keys} == {"lora_down.weight", "lora_up.weight", "alpha"}
    assert any("_attn1_to_q.lora_down.weight" in k for k in keys) and any("_to_out_0.lora_up.weight" in k for k in keys)
    assert alphas == {8.0}  # train.alpha, not diffusers' default alpha = rank

    torch.set_num_threads(1)
    pipe = load_pipeline(resolve_model("tiny-sd"))

    def draw():
        return np.asarray(pipe("char000", num_inference_steps=2, height=32, width=32,
                               generator=torch.Generator().manual_seed(0)).images[0], dtype=np.float32)

    base = draw()
    pipe.load_lora_weights(str(path))
    kohya = draw()
    pipe.unload_lora_weights()
    pipe.load_lora_weights(str(out / "cluster_000" / "adapter"))
    adapter = draw()
    assert np.abs(kohya - base).mean() > 0.5
    # the kohya file applies the same delta as the diffusers adapter (alpha/rank scale preserved)
    assert np.abs(kohya - adapter).mean() < 0.05


def test_rerun_trains_only_the_failed_one(trained):
    sets, out, _ = trained
    done_file = out / "cluster_000" / "cluster_000.safetensors"
    before = done_file.stat().st_mtime_ns
    for f in (sets / "cluster_002").iterdir():
        f.unlink()
    make_character(sets / "cluster_002", (200, 200, 30), seed=2, trigger="char002")  # images fixed
    runs_before = set((out / "_tune").iterdir())
    assert run_cli(f"input={sets}", f"output={out}", "train.max_steps=12", "train.save_every=6", *COMMON) == 0
    res = json.loads((out / "pipeline_results.json").read_text())
    assert {c: s["status"] for c, s in res["characters"].items()} == dict.fromkeys(
        ["cluster_000", "cluster_001", "cluster_002"], "done")
    assert done_file.stat().st_mtime_ns == before
    (new_run,) = set((out / "_tune").iterdir()) - runs_before
    trials = sorted(p.name for p in new_run.iterdir() if p.is_dir())
    assert trials == ["cluster_002"]


def test_killed_worker_resumes_from_checkpoint(tmp_path, ray_session):
    sets, out = tmp_path / "sets", tmp_path / "models"
    make_character(sets / "cluster_007", (220, 30, 30), trigger="char007")
    ckpt = out / "cluster_007" / "_resume" / "step000004.safetensors"
    pid_file = out / "cluster_007" / "worker.pid"
    killed: list[int] = []

    def killer():
        deadline = time.time() + 600
        while time.time() < deadline and not ckpt.exists():
            time.sleep(0.2)
        if ckpt.exists():
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    rc = run_cli(f"input={sets}", f"output={out}", "train.max_steps=40", "train.save_every=4",
                 "train.retries=2", "train.sample_prompts=[]", *[c for c in COMMON if "sample_prompts" not in c])
    th.join(timeout=5)
    assert rc == 0 and killed
    s = json.loads((out / "pipeline_results.json").read_text())["characters"]["cluster_007"]
    assert s["status"] == "done" and s["steps"] == 40, s
    assert s["resumed_from"] and s["resumed_from"][0] >= 4
    assert s["trained_steps_this_run"] == 40 - s["resumed_from"][-1]
    assert int(pid_file.read_text()) != killed[0]  # a new worker finished it
    assert (out / "cluster_007" / "cluster_007.safetensors").is_file()


def test_discover_triggers_and_image_rejects(tmp_path):
    """Pure (no Ray): which folders are characters, why others are skipped, per-image rejects."""
    from rayft.config import from_dict
    from rayft.frames.config import FramesConfig
    from rayft.frames.train import detect_trigger, discover, load_images

    make_character(tmp_path / "cluster_000", (220, 30, 30), n=5)
    make_corrupt(tmp_path / "cluster_000", n=1)  # one bad image among good ones
    make_character(tmp_path / "cluster_001", (30, 30, 220), n=2)
    (tmp_path / "contact_sheets").mkdir()
    make_character(tmp_path / "contact_sheets", (0, 0, 0), n=1)
    (tmp_path / "contact_sheets" / "ep01__0000.txt").unlink()
    (tmp_path / "empty").mkdir()
    cfg = from_dict(FramesConfig, {"train": {"input": str(tmp_path), "output": str(tmp_path / "o"), "min_images": 4}})
    chars, skipped = discover(cfg)
    assert list(chars) == ["cluster_000"] and len(chars["cluster_000"]) == 6
    assert skipped == {"cluster_001": "2 image/caption pairs < train.min_images=4",
                       "contact_sheets": "0 image/caption pairs < train.min_images=4 (1 images without a .txt caption)"}
    x, caps, rejects = load_images(chars["cluster_000"], 32, 50_000_000)
    assert x.shape == (5, 3, 32, 32) and float(x.min()) >= -1 and float(x.max()) <= 1 and len(caps) == 5
    assert len(rejects) == 1 and rejects[0][0] == "ep02__0000.png" and "\n" not in rejects[0][1]
    assert detect_trigger(["char007, red", "char007, blue", "other"]) == "char007"
    from PIL import Image  # an RGBA crop (frames segment output): hidden pixels become white
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[8:24, 8:24, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "crop.png")
    (tmp_path / "crop.txt").write_text("c")
    x, _, _ = load_images([(str(tmp_path / "crop.png"), str(tmp_path / "crop.txt"))], 32, 50_000_000)
    assert x[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0] and x[0, 1, 16, 16] == -1.0
    from rayft.config import ConfigError
    with pytest.raises(ConfigError, match="multiple of 8"):
        from_dict(FramesConfig, {"train": {"resolution": 36}})
