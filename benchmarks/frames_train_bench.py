"""Character-LoRA training benchmark (issue 15): `rayft frames train` on Ray Tune against the same
diffusers + peft loop in one plain process, and N characters in parallel vs one at a time.

    .venv/bin/python benchmarks/frames_train_bench.py --characters 4 --steps 60 --resolution 64

Both sides call the same ``train_character`` (tiny-sd preset, same images, seed, batch, steps), so
the difference is the scheduling, not the work:

1. throughput: one character, plain process (torch threads = train.cpus_per_character) vs a
   one-trial `rayft frames train` run; images/s of the training loop as each side measures it
   (``images_per_s`` in the character record: optimizer steps x batch / loop seconds) and the
   character's wall time including model load, latent caching and sample images. Target >= 0.9x.
2. parallel: N characters with ``train.concurrency=0`` (as many as the cluster's CPUs fit, one CPU
   each) vs ``train.concurrency=1`` (sequential trials); wall-time ratio of the two runs.
3. projection (arithmetic, stated as such): 100 characters x 2000 steps on 1, 4 and 8 GPUs from
   a per-step cost (``--gpu-step-s``: seconds per SD-1.5 batch-2 512px LoRA step on one GPU;
   default 0.35 s, a published-order figure for an A100-class card with fp16, not measured here)
   plus the measured per-character fixed cost scaled the same way.

Runs are interleaved A-B-B-A (plain, Ray, Ray, plain) so drift in a shared machine's load hits
both sides alike. Prints one JSON object; paste the numbers into benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402

from rayft.config import from_dict  # noqa: E402
from rayft.frames.config import FramesConfig  # noqa: E402
from rayft.frames.sd_model import resolve_model  # noqa: E402
from rayft.frames.train import discover, run_frames_train, train_character  # noqa: E402


def make_sets(root: Path, characters: int, images: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(characters):
        d = root / f"cluster_{c:03d}"
        d.mkdir(parents=True, exist_ok=True)
        color = rng.integers(0, 255, size=3)
        for i in range(images):
            a = np.full((96, 128, 3), 235, np.uint8)
            x, y = rng.integers(0, 64, size=2)
            a[y:y + 32, x:x + 40] = color
            Image.fromarray(a).save(d / f"ep__{i:04d}.png")
            (d / f"ep__{i:04d}.txt").write_text(f"char{c:03d}, square\n")


def config(sets: Path, out: Path, a) -> FramesConfig:
    return from_dict(FramesConfig, {"train": {
        "input": str(sets), "output": str(out), "model": "tiny-sd", "min_images": 4, "max_steps": a.steps,
        "resolution": a.resolution, "rank": a.rank, "alpha": a.rank, "batch_size": a.batch, "save_every": 0,
        "sample_prompts": ["{trigger}"], "sample_seeds": [0], "sample_steps": 4, "cpus_per_character": a.cpus,
        "log_every": 10}})


def plain(sets: Path, work: Path, a) -> dict:
    cfg = config(sets, work / "plain", a)
    chars, _ = discover(cfg)
    name = sorted(chars)[0]
    shutil.rmtree(work / "plain", ignore_errors=True)
    t0 = time.time()
    rec = train_character(cfg.train, name, chars[name], resolve_model("tiny-sd"), work / "plain" / name,
                          work / "plain" / "lora_tests")
    return {"images_per_s": rec["images_per_s"], "wall_s": round(time.time() - t0, 2)}


def ray_run(sets: Path, work: Path, a, only: list[str] | None, concurrency: int) -> tuple[float, dict]:
    out = work / f"ray-c{concurrency}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = config(sets, out, a)
    cfg.train.only = only or []
    cfg.train.concurrency = concurrency
    t0 = time.time()
    path = run_frames_train(cfg)
    wall = time.time() - t0
    return wall, json.loads(Path(path).read_text())["characters"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--characters", type=int, default=4)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--cpus", type=float, default=1.0, help="train.cpus_per_character (and the plain loop's threads)")
    ap.add_argument("--gpu-step-s", type=float, default=0.35)
    a = ap.parse_args()
    import ray
    import torch

    from rayft import _env

    work = Path(tempfile.mkdtemp(prefix="frames_train_bench_"))
    sets = work / "sets"
    make_sets(sets, a.characters, a.images)
    resolve_model("tiny-sd")  # build the preset once, outside every timing
    torch.set_num_threads(max(1, int(a.cpus)))
    _env.ray_start(log_to_driver=False)
    try:
        first = ["cluster_000"]
        p1 = plain(sets, work, a)
        r1w, r1 = ray_run(sets, work, a, first, 0)
        r2w, r2 = ray_run(sets, work, a, first, 0)
        p2 = plain(sets, work, a)
        plain_ips = statistics.mean([p1["images_per_s"], p2["images_per_s"]])
        ray_ips = statistics.mean([r1["cluster_000"]["images_per_s"], r2["cluster_000"]["images_per_s"]])
        par_w, par = ray_run(sets, work, a, None, 0)
        seq_w, seq = ray_run(sets, work, a, None, 1)
        per_char_fixed = statistics.mean(c["wall_time_s"] - c["train_s"] for c in seq.values())
        proj = {}
        for gpus in (1, 4, 8):
            per_char = 2000 * a.gpu_step_s + per_char_fixed
            proj[f"{gpus}_gpu_h"] = round(100 * per_char / gpus / 3600, 2)
        res = {
            "setup": vars(a) | {"cluster_cpus": ray.cluster_resources().get("CPU")},
            "throughput": {"plain_images_per_s": round(plain_ips, 3), "ray_images_per_s": round(ray_ips, 3),
                           "ratio": round(ray_ips / plain_ips, 3), "plain_wall_s": [p1["wall_s"], p2["wall_s"]],
                           "ray_run_wall_s": [round(r1w, 2), round(r2w, 2)]},
            "parallel": {"characters": a.characters, "parallel_wall_s": round(par_w, 2),
                         "sequential_wall_s": round(seq_w, 2), "speedup": round(seq_w / par_w, 3),
                         "all_done": all(c["status"] == "done" for c in [*par.values(), *seq.values()])},
            "projection_100_characters_2000_steps (arithmetic, not measured)": {
                "assumed_gpu_step_s": a.gpu_step_s, "measured_per_character_fixed_s_cpu": round(per_char_fixed, 2),
                **proj},
        }
        print(json.dumps(res, indent=1))
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
