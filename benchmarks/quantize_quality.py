"""Quality and speed cost of a quantized frozen base (issue 19 item 1): the demo recipe
(configs/demo.yaml: SmolLM2-135M-Instruct LoRA on the W1 sample pairs, 30 steps, 2 Ray Train
workers) once per ``model.quantize`` value, same data, seed and steps.

    .venv/bin/python benchmarks/quantize_quality.py [--modes none,nf4,int8] [--steps 30]

Reported per mode: validation loss at the start and after the last step, its difference from
the fp32-base run (target: within 2 %), useful tokens/s over the steady steps (step > 1), peak
RSS per worker, wall time. Runs are interleaved A B ... B A when --repeat 2 (speed figures then
averaged over both runs of a mode; the loss is deterministic). Run it on a quiet machine for the
tokens/s; the losses do not depend on load. Writes benchmarks/out/quantize_quality.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

for k, v in {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
             "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}.items():
    os.environ.setdefault(k, v)
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from train_throughput import ray_run  # noqa: E402  (benchmarks/ is on sys.path: scripts run from it)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modes", default="none,nf4")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=1, help="2: interleave A B B A for the speed figures")
    ap.add_argument("--run-dir", default="/tmp/rayft-quantize-quality")
    ap.add_argument("--out", default=str(REPO / "benchmarks/out/quantize_quality.json"))
    a = ap.parse_args()

    from rayft.config import load
    from rayft.train.config import TrainConfig

    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    order = modes if a.repeat < 2 else modes + modes[::-1]
    uptime = lambda: subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()  # noqa: E731
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": "python " + " ".join(sys.argv),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
           "uptime_before": uptime(), "runs": []}
    for i, mode in enumerate(order):
        cfg = load(TrainConfig, REPO / "configs/demo.yaml",
                   [f"run.dir={a.run_dir}", f"run.name={mode}-{i}", "run.overwrite=true",
                    f"train.max_steps={a.steps}", f"model.quantize={mode}", "generate.prompt="])
        r = ray_run(cfg) | {"mode": mode}
        print(json.dumps(r), file=sys.stderr, flush=True)
        out["runs"].append(r)
    out["uptime_after"] = uptime()
    ref = [r for r in out["runs"] if r["mode"] == "none"]
    summary = {}
    for mode in modes:
        rs = [r for r in out["runs"] if r["mode"] == mode]
        row = {"val_loss": rs[0]["val_loss"], "val_loss_start": rs[0]["val_loss_start"],
               "useful_tokens_per_s": sum(r["useful_tokens_per_s"] for r in rs) / len(rs),
               "peak_rss_mb_per_worker": max(max(r["peak_rss_mb_per_worker"]) for r in rs),
               "wall_s_incl_startup": sum(r["wall_s_incl_startup"] for r in rs) / len(rs)}
        if ref and mode != "none":
            row["val_loss_vs_fp32"] = row["val_loss"] / ref[0]["val_loss"] - 1
            row["tokens_per_s_vs_fp32"] = row["useful_tokens_per_s"] / (
                sum(r["useful_tokens_per_s"] for r in ref) / len(ref))
        summary[mode] = row
    out["summary"] = summary
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
