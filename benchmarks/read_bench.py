"""Reading pair files for training: Ray Data tasks (what `rayft train` uses) vs the
in-process reader, on the same generated pairs (every user format, bad rows included), and
the driver's peak memory over the whole train data phase.

(a) read speed, 100k pairs (target: Ray Data >= 1.0x the in-process reader on 2 cores):

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 \
        .venv/bin/python benchmarks/read_bench.py --n 100000 --repeat 3 --work /tmp/read_bench

  After one untimed warm-up read (Ray starting its workers), ``ray_data_s`` times what
  `rayft train` does: ``ray_read.read_ds`` (Ray tasks read + normalise into Ray's object
  store as a materialized Dataset, the driver gets per-task counts and rejects) plus its
  rejects and per-file counts on the driver. Best and median of the repeats are reported.
  ``ray_to_driver_s`` is ``read_pairs_ray`` (the same read with every kept row brought back
  as a dict: what train did before, and what mixtures still do). After the timed repeats,
  both must give exactly the in-process reader's rows, rejects and per-file counts (checked).

(b) driver peak RSS of the train data phase (``prepare`` + ``tokenized_datasets``, tiny-qwen2
  tokenizer, 2 workers), each size in a fresh child process so ``ru_maxrss`` is per size
  (target: 1M pairs within 1.5x of 100k):

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 \
        .venv/bin/python benchmarks/read_bench.py --rss 100000,1000000 --repeat 0 --work /tmp/read_bench

  ``--rss-paths ray,driver`` adds the old driver-side split (``prepare(read=read_pairs_ray)``:
  rows as dicts and Arrow tables on the driver) for the side-by-side figure. Data for size N
  is generated once under ``--work``/rssN (1M pairs: ~10 files, a few hundred MB).

Prints a JSON summary (Ray already started in (a): its start-up is printed separately).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from rayft import _env  # noqa: E402
from rayft.testing import pairs as synth  # noqa: E402
from rayft.data.formats import read_pairs  # noqa: E402
from rayft.data.ray_read import read_ds, read_pairs_ray  # noqa: E402


def _data(work: Path, n: int, files: int) -> Path:
    data = work / "data"
    if not data.is_dir():
        synth.generate(work, n=n, n_files=files)
    return data


def read_speed(a) -> dict:
    data = _data(Path(a.work), a.n, a.files)
    mb = sum(f.stat().st_size for f in data.iterdir()) / 2**20
    t = time.time()
    _env.ray_start(log_to_driver=False)
    ray_start_s = time.time() - t
    import ray
    ray.data.DataContext.get_current().enable_progress_bars = False
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()} {os.cpu_count()} cores",
           "pairs": a.n, "files": a.files, "mb": round(mb, 1), "ray_cpus": ray.cluster_resources().get("CPU"),
           "ray_start_s": round(ray_start_s, 1), "load_before": os.getloadavg()[0],
           "in_process_s": [], "ray_data_s": [], "ray_to_driver_s": []}
    t = time.time()  # warm-up, untimed in the figures: Ray starts its worker processes on first use
    read_ds(str(data)).files()
    out["ray_warmup_s"] = round(time.time() - t, 1)
    for _ in range(a.repeat):
        t = time.time()
        local = read_pairs(str(data), require_rows=False)
        out["in_process_s"].append(round(time.time() - t, 2))
        t = time.time()
        r = read_ds(str(data))
        rejects, files = r.rejects(), r.files()
        out["ray_data_s"].append(round(time.time() - t, 2))
        del r
        t = time.time()
        res = read_pairs_ray(str(data))
        out["ray_to_driver_s"].append(round(time.time() - t, 2))
    # the check, outside the timing: the train path's read gives exactly the in-process rows/rejects
    r = read_ds(str(data))
    assert r.kept_rows() == local.rows, "readers disagree on the rows"
    assert rejects == r.rejects() == local.rejects, "readers disagree on the rejects"
    assert files == local.files and res.rows == local.rows and res.rejects == local.rejects, "readers disagree"
    out.update(rows_kept=len(local.rows), rows_rejected=len(local.rejects), load_after=os.getloadavg()[0])
    best_l, best_r, best_d = min(out["in_process_s"]), min(out["ray_data_s"]), min(out["ray_to_driver_s"])
    out["speedup_best"] = round(best_l / best_r, 2)  # the figure: >= 1.0 is the target
    out["speedup_best_to_driver"] = round(best_l / best_d, 2)
    med = statistics.median
    out["speedup_median"] = round(med(out["in_process_s"]) / med(out["ray_data_s"]), 2)  # noise check
    ray.shutdown()
    return out


def vm_hwm_mb() -> float:
    """This process's peak RSS since its exec (VmHWM). Not ru_maxrss: Linux keeps ru_maxrss across
    execve, so a child started by a big parent (the one that generated 1M pairs) would report the
    parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_child(data: str, path: str) -> dict:
    """One size, in this (fresh) process: the train data phase, then this process's peak RSS."""
    from rayft.config import load
    from rayft.train.config import TrainConfig
    from rayft.train.datasets import prepare, tokenized_datasets

    t0 = time.time()
    _env.ray_start(log_to_driver=False)
    import ray
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray_start_s = time.time() - t0
    rss_ray = vm_hwm_mb()
    run = tempfile.mkdtemp(prefix="read_bench_run_")
    cfg = load(TrainConfig, None, [f"data.path={data}", f"run.dir={run}", "model.name=tiny-qwen2",
                                   "scaling.num_workers=2", "train.batch_size=8", "data.max_seq_len=256",
                                   "data.val_fraction=0.01"])
    t = time.time()
    p = prepare(cfg) if path == "ray" else prepare(cfg, read=read_pairs_ray)
    prepare_s = time.time() - t
    t = time.time()
    _full, parts = tokenized_datasets(p, cfg)
    tokenize_s = time.time() - t
    out = {"path": path, "train_rows": p.stats["train_rows"], "val_rows": p.stats["val_rows"],
           "rows_rejected": p.stats["rows_rejected"], "prepare_s": round(prepare_s, 1),
           "tokenize_s": round(tokenize_s, 1), "ray_start_s": round(ray_start_s, 1),
           "driver_rss_after_ray_start_mb": round(rss_ray), "driver_peak_rss_mb": round(vm_hwm_mb())}
    ray.shutdown()
    return out


def driver_rss(a) -> dict:
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()} {os.cpu_count()} cores",
           "load_before": os.getloadavg()[0], "sizes": []}
    for n in [int(x) for x in a.rss.split(",")]:
        data = _data(Path(a.work) / f"rss{n}", n, a.files)
        for path in a.rss_paths.split(","):
            r = subprocess.run([sys.executable, __file__, "--rss-child", str(data), "--rss-path", path],
                               capture_output=True, text=True)
            if r.returncode:
                raise SystemExit(f"child for {n} pairs ({path}) failed:\n{r.stderr[-3000:]}")
            res = json.loads(r.stdout.strip().splitlines()[-1])
            out["sizes"].append({"pairs": n, **res})
    ray_rows = {s["pairs"]: s["driver_peak_rss_mb"] for s in out["sizes"] if s["path"] == "ray"}
    if len(ray_rows) >= 2:
        lo, hi = min(ray_rows), max(ray_rows)
        out["ray_peak_ratio"] = round(ray_rows[hi] / ray_rows[lo], 2)  # target <= 1.5 for 1M vs 100k
    out["load_after"] = os.getloadavg()[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3, help="read-speed repeats (0: skip the read-speed part)")
    ap.add_argument("--work", default="/tmp/read_bench")
    ap.add_argument("--rss", default="", help="comma-separated pair counts for the driver peak-RSS part")
    ap.add_argument("--rss-paths", default="ray", help="ray (rows stay in Ray) and/or driver (the old split)")
    ap.add_argument("--rss-child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--rss-path", default="ray", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rss_child:
        print(json.dumps(rss_child(a.rss_child, a.rss_path)))
        return
    out = {}
    if a.repeat:
        out["read"] = read_speed(a)
    if a.rss:
        out["driver_rss"] = driver_rss(a)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
