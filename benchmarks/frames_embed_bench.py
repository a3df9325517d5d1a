"""Embedding benchmark: `rayft frames embed` (Ray Data + open_clip actor) against a plain
single-process PyTorch DataLoader loop with the same model, threads, batch size and frames.

    .venv/bin/python benchmarks/frames_embed_bench.py --frames 512 --model ViT-B-32 --threads 2

Both sides call the same ``decode_batch`` (PIL decode, JPEG draft, resize + centre crop) and
``encode_images`` (open_clip forward, fp32 on CPU), so the difference is the pipeline, not
the work. Runs are interleaved A-B-B-A (baseline, Ray, Ray, baseline) so drift in the load
of a shared machine hits both sides alike. Also prints the compute-bound limit: the model's
FLOPs per image (torch FlopCounterMode) / a measured fp32 matmul FLOP/s at the same threads.
Timed from the model load on (the Ray side: from run_embed's start, with Ray already up).
On a shared machine wall-clock rates follow other people's load; frames per CPU-second
(this process for the loop; driver + every Ray process for Ray) is the steadier measure.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402

from rayft.config import load  # noqa: E402
from rayft.testing import frames as synth  # noqa: E402
from rayft.frames.config import FramesConfig  # noqa: E402
from rayft.frames.decode import decode_batch  # noqa: E402
from rayft.frames.embed import encode_images, load_clip, model_image_size  # noqa: E402

USERS_FRAMES = 1_042_599


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def make_frames(root: Path, n: int, episodes: int, size: tuple[int, int]) -> list[str]:
    if not (root / "truth.csv").exists():
        synth.write_episodes(root, n_episodes=episodes, frames_per_episode=n // episodes, n_characters=6,
                             size=size, seed=0, formats=("jpg",))
    return [r["path"] for r in synth.read_truth(root)]


def cpu_tree_seconds(pid: int | None = None) -> float:
    """CPU seconds used by ``pid`` and every live descendant, plus what they reaped from
    exited children (cutime/cstime): Ray's raylet, GCS and workers count on Ray's side. On
    a shared machine CPU seconds per frame is the measure contention does not move."""
    pid = pid or os.getpid()
    stats = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                f = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(d)] = (int(f[1]), sum(int(x) for x in f[11:15]))  # ppid; utime stime cutime cstime
    tree, todo = set(), [pid]
    while todo:
        p = todo.pop()
        tree.add(p)
        todo += [c for c, (pp, _) in stats.items() if pp == p and c not in tree]
    return sum(stats[p][1] for p in tree if p in stats) / os.sysconf("SC_CLK_TCK")


def compute_limit(cfg, threads: int) -> dict:
    """Model FLOPs per image and measured fp32 matmul FLOP/s -> images/s upper bound."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(threads)
    clip = load_clip(cfg.model)
    s = clip.image_size
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        clip.model.encode_image(torch.zeros(1, 3, s, s))
    flops = fc.get_total_flops()
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(2):
        a @ b
    best, best_cpu = 0.0, 0.0
    for _ in range(5):
        t, c = time.perf_counter(), time.process_time()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * 2048 ** 3 / (time.perf_counter() - t))
        best_cpu = max(best_cpu, 4 * 2 * 2048 ** 3 / (time.process_time() - c))
    return {"gflop_per_image": round(flops / 1e9, 2), "matmul_gflops": round(best / 1e9, 1),
            "limit_frames_per_s": round(best / flops, 2),
            "matmul_gflop_per_cpu_s": round(best_cpu / 1e9, 1),
            "limit_frames_per_cpu_s": round(best_cpu / flops, 3),
            "limit_frames_per_s_idle": round(best_cpu * threads / flops, 2)}


def baseline(paths: list[str], cfg, threads: int) -> dict:
    """What a user writes without rayft: one process, DataLoader(num_workers=0), the model."""
    import torch
    from torch.utils.data import DataLoader

    torch.set_num_threads(threads)
    size = model_image_size(cfg.model)
    e = cfg.embed

    def collate(batch):
        return decode_batch({"path": np.array(batch, dtype=object)}, size, e.max_image_pixels, e.min_side)

    t0, c0 = time.perf_counter(), time.process_time()
    clip = load_clip(cfg.model)
    t_load = time.perf_counter() - t0
    loader = DataLoader(paths, batch_size=e.batch_size, num_workers=0, collate_fn=collate)
    n, t_dec, t_model, first = 0, 0.0, 0.0, None
    t = time.perf_counter()
    for batch in loader:
        t1 = time.perf_counter()
        t_dec += t1 - t
        ok = np.array([not r for r in batch["reject"]])
        emb = encode_images(clip, batch["image"][ok])
        n += len(emb)
        t = time.perf_counter()
        t_model += t - t1
        first = first or (t, n)
    total = time.perf_counter() - t0
    cpu = time.process_time() - c0  # this process only: the plain loop has no Ray services
    return {"frames": n, "seconds": round(total, 2), "frames_per_s": round(n / total, 3),
            "cpu_s": round(cpu, 1), "frames_per_cpu_s": round(n / cpu, 4),
            "steady_frames_per_s": round((n - first[1]) / (t - first[0]), 3),
            "model_load_s": round(t_load, 2), "decode_s": round(t_dec, 2), "model_s": round(t_model, 2),
            "decode_frames_per_s": round(n / t_dec, 1), "model_frames_per_s": round(n / t_model, 3)}


def ray_side(root: Path, out: Path, cfg_args: list[str]) -> dict:
    from rayft.frames.run import run_embed

    shutil.rmtree(out, ignore_errors=True)
    cfg = load(FramesConfig, REPO / "configs" / "frames.yaml",
               [f"embed.input={root}", f"embed.output={out}", "embed.progress=false", *cfg_args])
    t0, c0 = time.perf_counter(), cpu_tree_seconds()
    run_embed(cfg)
    total = time.perf_counter() - t0
    time.sleep(2)  # let raylet reap the finished actor so its CPU lands in cutime
    cpu = cpu_tree_seconds() - c0  # driver + raylet/GCS/agents + decode workers + actor
    rep = json.loads((out / "report.json").read_text())
    n = rep["frames_embedded_this_run"]
    return {"frames": n, "seconds": round(total, 2), "frames_per_s": round(n / total, 3),
            "cpu_s": round(cpu, 1), "frames_per_cpu_s": round(n / cpu, 4),
            "steady_frames_per_s": rep["pipeline"].get("steady_frames_per_s"),
            "first_result_s": rep["pipeline"].get("first_result_s"), "pipeline": rep["pipeline"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=512)
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--size", default="640x360", help="synthetic frame size WxH (JPEG)")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--image-size", type=int, default=0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--work", default=str(REPO / "benchmarks" / "out" / "embed"))
    a = ap.parse_args()
    import ray

    work = Path(a.work)
    w, h = (int(v) for v in a.size.split("x"))
    paths = make_frames(work / f"frames_{a.frames}_{a.size}", a.frames, a.episodes, (w, h))
    cfg_args = [f"model.name={a.model}", "model.pretrained=", f"model.image_size={a.image_size}",
                f"embed.batch_size={a.batch}", f"embed.decode_batch_size={a.batch}", f"embed.threads={a.threads}",
                "embed.concurrency=1"]
    cfg = load(FramesConfig, REPO / "configs" / "frames.yaml", cfg_args)
    limit = compute_limit(cfg, a.threads)
    print(json.dumps({"compute_limit": limit}), flush=True)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    runs = []
    for i, side in enumerate(["baseline", "ray", "ray", "baseline"]):  # A-B-B-A
        load_before = load_avg()
        r = baseline(paths, cfg, a.threads) if side == "baseline" else ray_side(
            work / f"frames_{a.frames}_{a.size}", work / f"out_{i}", cfg_args)
        r.update(side=side, load_avg=load_before)
        runs.append(r)
        print(json.dumps(r), flush=True)
    ray.shutdown()
    def side(name, key):
        return [r[key] or 0.0 for r in runs if r["side"] == name]  # None: all frames came in one result

    b, rr = side("baseline", "frames_per_s"), side("ray", "frames_per_s")
    bs, rs = side("baseline", "steady_frames_per_s"), side("ray", "steady_frames_per_s")
    ratio, steady_ratio = sum(rr) / sum(b), sum(rs) / max(sum(bs), 1e-9)
    bc, rc = side("baseline", "frames_per_cpu_s"), side("ray", "frames_per_cpu_s")
    cpu_ratio = sum(rc) / sum(bc)
    summary = {"model": a.model, "image_size": model_image_size(cfg.model), "frame_size": a.size,
               "frames": len(paths), "threads": a.threads, "batch": a.batch,
               "baseline_frames_per_s": b, "ray_frames_per_s": rr, "ray_over_baseline": round(ratio, 3),
               "baseline_steady": bs, "ray_steady": rs, "ray_over_baseline_steady": round(steady_ratio, 3),
               "baseline_frames_per_cpu_s": bc, "ray_frames_per_cpu_s": rc, "ray_over_baseline_cpu": round(cpu_ratio, 3),
               "ray_first_result_s": side("ray", "first_result_s"), "compute_limit": limit,
               "date": time.strftime("%Y-%m-%d %H:%M"),
               "projected_hours_users_frames_one_worker": round(USERS_FRAMES / max(sum(rs) / len(rs), 1e-9) / 3600, 1)}
    print(json.dumps(summary), flush=True)

    def cell(v):
        return f"{', '.join(map(str, v))} (mean {sum(v) / len(v):.2f})"

    print(f"\n| side | end to end frames/s (A-B-B-A) | steady-state frames/s | frames per CPU-second |\n"
          f"|---|---|---|---|\n"
          f"| DataLoader loop (1 process) | {cell(b)} | {cell(bs)} | {cell(bc)} |\n"
          f"| rayft frames embed (Ray Data) | {cell(rr)} | {cell(rs)} | {cell(rc)} |\n"
          f"| ratio Ray / loop | {ratio:.3f} | {steady_ratio:.3f} | {cpu_ratio:.3f} |\n"
          f"| compute-bound limit ({limit['gflop_per_image']} GFLOP/img / matmul {limit['matmul_gflops']} "
          f"GFLOP/s wall, {limit['matmul_gflop_per_cpu_s']} per CPU-s) | {limit['limit_frames_per_s']} | "
          f"{limit['limit_frames_per_s_idle']} (idle, {a.threads} threads) | {limit['limit_frames_per_cpu_s']} |")
    with open(work / "results.jsonl", "a") as f:
        f.write(json.dumps({"runs": runs, **summary}) + "\n")


if __name__ == "__main__":
    main()
