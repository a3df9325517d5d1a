"""Reading pair files for training: Ray Data tasks (what `rayft train` uses) vs the
in-process reader, on the same 100k generated pairs (every user format, bad rows included).

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 \
        .venv/bin/python benchmarks/read_bench.py --n 100000 --repeat 3 --work /tmp/read_bench

Both readers must return the same rows and rejects (checked); prints a JSON summary with
wall seconds per repeat (Ray already started: its ~10 s start-up is printed separately).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from rayft import _env  # noqa: E402
from rayft.testing import pairs as synth  # noqa: E402
from rayft.data.formats import read_pairs  # noqa: E402
from rayft.data.ray_read import read_pairs_ray  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", default="/tmp/read_bench")
    a = ap.parse_args()
    data = Path(a.work) / "data"
    if not data.is_dir():
        synth.generate(a.work, n=a.n, n_files=a.files)
    mb = sum(f.stat().st_size for f in data.iterdir()) / 2**20
    t = time.time()
    _env.ray_start(log_to_driver=False)
    ray_start_s = time.time() - t
    import ray
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()} {os.cpu_count()} cores",
           "pairs": a.n, "files": a.files, "mb": round(mb, 1), "ray_cpus": ray.cluster_resources().get("CPU"),
           "ray_start_s": round(ray_start_s, 1), "load_before": os.getloadavg()[0], "in_process_s": [], "ray_data_s": []}
    for _ in range(a.repeat):
        t = time.time()
        local = read_pairs(str(data), require_rows=False)
        out["in_process_s"].append(round(time.time() - t, 2))
        t = time.time()
        res = read_pairs_ray(str(data))
        out["ray_data_s"].append(round(time.time() - t, 2))
        assert res.rows == local.rows and len(res.rejects) == len(local.rejects), "readers disagree"
    out.update(rows_kept=len(res.rows), rows_rejected=len(res.rejects), load_after=os.getloadavg()[0])
    best_l, best_r = min(out["in_process_s"]), min(out["ray_data_s"])
    out["speedup_best"] = round(best_l / best_r, 2)
    print(json.dumps(out, indent=1))
    ray.shutdown()


if __name__ == "__main__":
    main()
