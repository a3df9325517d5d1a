"""How long `rayft train` waits on Ray Train's controller poll (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S).

    .venv/bin/python benchmarks/report_interval_bench.py --out /tmp/report_interval_bench

Ray Train 2.60's `ray.train.report` hands the result to a queue of size 1 that the controller
drains once per poll, and the controller polls at most every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S
(2.0 s by default), so every report (rayft reports every `train.log_every` steps) and every
controller state change (scheduling, starting, running, finishing) can wait up to that long.
rayft sets 0.25 s unless the user set it (rayft/_env.py). This runs the tiny recipe as the CLI,
each a fresh local Ray, interleaved A B B A per setting so drift cancels: wall time of the whole
`rayft train` process and the steady steps/s from metrics.jsonl, at log_every 5 (the recipe's)
and 1. Prints one JSON object (also <out>/report_interval_bench.json). Quiet machine only.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one(interval: str, log_every: int, out: Path, tag: str) -> dict:
    env = dict(os.environ, RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=interval)
    run_dir = out / tag
    t0 = time.perf_counter()
    p = subprocess.run([str(Path(sys.executable).parent / "rayft"), "train", "--config", str(REPO / "configs/tiny.yaml"),
                        f"run.dir={run_dir}", f"train.log_every={log_every}"],
                       env=env, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if p.returncode:
        sys.exit(f"rayft train failed ({tag}):\n{p.stderr[-2000:]}")
    rows = [json.loads(line) for line in (run_dir / "tiny/metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "step" in r and "time" in r]
    steps = rows[-1]["step"] - rows[0]["step"]
    span = rows[-1]["time"] - rows[0]["time"]
    return {"interval_s": float(interval), "log_every": log_every, "wall_s": round(wall, 1),
            "steps_per_s": round(steps / span, 3) if span > 0 else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/report_interval_bench")
    ap.add_argument("--log-every", type=int, nargs="+", default=[5, 1])
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    runs = []
    for le in a.log_every:
        for i, iv in enumerate(("2.0", "0.25", "0.25", "2.0")):
            r = one(iv, le, out, f"le{le}_{i}_{iv}")
            print(json.dumps(r), flush=True)
            runs.append(r)
    summary = {}
    for le in a.log_every:
        for iv in (2.0, 0.25):
            rs = [r for r in runs if r["log_every"] == le and r["interval_s"] == iv]
            summary[f"log_every={le} interval={iv}"] = {
                "wall_s_mean": round(sum(r["wall_s"] for r in rs) / len(rs), 1),
                "steps_per_s_mean": round(sum(r["steps_per_s"] for r in rs) / len(rs), 3)}
    res = {"runs": runs, "summary": summary, "load_before": load0, "load_after": os.getloadavg()}
    (out / "report_interval_bench.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res["summary"], indent=1))


if __name__ == "__main__":
    main()
