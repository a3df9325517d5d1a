"""Resume a real-size ZeRO-3 run: stop it after 2 of 3 steps, rerun, and compare with the
uninterrupted run of the same row in benchmarks/out/memory_envelope/results.jsonl.

    .venv/bin/python benchmarks/zero3_resume_check.py [--row full-0.5b-zero3-w4-offo-lc1024-vc8]

Checks what the tiny-model tests cannot: with nvme optimizer offload, a real model's optimizer
sub-groups are above DeepSpeed's swap minimum, so the restore (safe_set_full_* into swapped
sub-groups) really writes through nvme; and each sliced/whole parameter of a 0.5B comes back.
Records each launch's wall time, the restore time, peaks and losses into
benchmarks/out/zero3_resume_check.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import memory_envelope as me  # noqa: E402


def launch(ov: list[str], log: Path) -> tuple[int, float]:
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
               DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               TORCH_EXTENSIONS_DIR=str(REPO / ".cache" / "torch_extensions"),
               RAYFT_CACHE=str(REPO / ".cache" / "rayft"), PYTHONPATH=str(REPO / "src"))
    t0 = time.time()
    with log.open("w") as f:
        rc = subprocess.run([sys.executable, "-m", "rayft.cli", "train", *ov], stdout=f, stderr=subprocess.STDOUT,
                            env=env, cwd=REPO, timeout=3600).returncode
    return rc, time.time() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--row", default="full-0.5b-zero3-w4-offo-lc1024-vc8")
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    row = next(r for r in me.matrix() if r["name"] == args.row)
    ref = [r for r in me.load_results() if r["name"] == args.row and r["status"] == "ok"]
    dirs, pairs = me.write_inputs(128)
    ov = me.overrides(row, dirs[row["model"]], pairs, args.steps, 128)
    ov = [o for o in ov if not o.startswith(("run.name=", "run.overwrite="))] + [f"run.name={args.row}-resume"]
    run_dir = me.OUT / "runs" / f"{args.row}-resume"
    shutil.rmtree(run_dir, ignore_errors=True)
    out = {"row": args.row, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "uptime_before": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
           "command": " ".join(sys.argv), "launches": []}
    logs = me.OUT / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for i, extra in enumerate((["train.stop_after_steps=2"], [])):
        log = logs / f"{args.row}-resume-{i + 1}.log"
        rc, wall = launch(ov + extra, log)
        text = log.read_text(errors="replace")
        rep = json.loads((run_dir / "report.json").read_text()) if (run_dir / "report.json").exists() else {}
        out["launches"].append({"rc": rc, "wall_s": round(wall, 1), "steps": rep.get("steps"),
                                "resumed_from_step": rep.get("resumed_from_step"), "finished": rep.get("finished"),
                                "peak_rss_mb": rep.get("peak_rss_mb"),
                                "run_line": re.findall(r"\[rayft\] run .*", text)[-1:]})
        if rc != 0:
            out["error"] = text[-2000:]
            break
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()] \
        if (run_dir / "metrics.jsonl").exists() else []
    out["losses"] = {m["step"]: m["loss"] for m in metrics if "loss" in m}
    mem = run_dir / "memory.json"
    out["memory"] = json.loads(mem.read_text()) if mem.exists() else None
    if ref:
        r = ref[-1]
        out["uninterrupted"] = {"date": r["date"], "loss_first": r["loss_first"], "loss_last": r["loss_last"],
                                "peak_rss_mb": r["peak_rss_mb"]}
        last = out["losses"].get(args.steps)
        out["step_last_abs_diff"] = None if last is None else abs(last - r["loss_last"])
    out["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    dest = REPO / "benchmarks" / "out" / "zero3_resume_check.json"
    dest.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: out.get(k) for k in ("launches", "losses", "uninterrupted", "step_last_abs_diff")}, indent=1))
    shutil.rmtree(run_dir, ignore_errors=True)
    return 0 if out["launches"][-1]["rc"] == 0 and len(out["launches"]) == 2 else 1


if __name__ == "__main__":
    sys.exit(main())
