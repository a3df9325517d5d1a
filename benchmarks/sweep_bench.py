"""Sweep benchmark (issue 7): the same 16-trial grid with ASHA and without early stopping,
one after the other in one Ray session; wall-time ratio and whether both pick the same best.

    .venv/bin/python benchmarks/sweep_bench.py                 # 16 trials, 300 steps each
    .venv/bin/python benchmarks/sweep_bench.py --max-steps 40  # quick check

Tiny model (configs/tiny.yaml), 1 Ray Train worker x 0.5 CPU per trial + 0.1 CPU trial
driver, so 3 trials run at once on 2 CPUs. Writes benchmarks/out/sweep/summary.json and
prints the numbers for benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
# lr values in a mixed order: Tune runs grid points in order, and with ascending lr the
# worst trials would come first and meet empty ASHA rungs (nothing to be compared with)
SPACE = {"train.lr": {"grid": [1e-3, 1e-4, 3e-3, 3e-4]}, "lora.r": {"grid": [4, 16]},
         "train.warmup_steps": {"grid": [0, 10]}}  # 4 x 2 x 2 = 16 trials


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def one_sweep(out: Path, kind: str, a) -> dict:
    from rayft.config import load
    from rayft.tune.config import SweepConfig
    from rayft.tune.sweep import run_sweep

    import yaml
    spec = out / f"{kind}.yaml"
    spec.write_text(yaml.safe_dump({"space": SPACE}))
    cfg = load(SweepConfig, spec, [
        f"sweep.dir={out}", f"sweep.name={kind}", "sweep.search=random", "sweep.num_samples=1",
        "sweep.trial_cpus=0.1", f"scheduler.kind={kind}", f"scheduler.grace_period={a.grace}",
        f"scheduler.reduction_factor={a.rf}", f"base.recipe={REPO / 'configs/tiny.yaml'}",
        f"base.overrides.data.path={REPO / 'src/rayft/assets/samples/subtitle_pairs.jsonl'}",
        f"base.overrides.train.max_steps={a.max_steps}", f"base.overrides.train.eval_every={a.eval_every}",
        f"base.overrides.train.log_every={a.eval_every}", f"base.overrides.train.checkpoint_every={a.max_steps // 2}",
        "base.overrides.scaling.num_workers=1", "base.overrides.scaling.cpus_per_worker=0.5",
        "base.overrides.generate.prompt="])
    shutil.rmtree(out / kind, ignore_errors=True)
    load_before = uptime()
    t0 = time.time()
    run_sweep(cfg)
    wall = time.time() - t0
    res = json.loads((out / kind / "results.json").read_text())
    best = json.loads((out / kind / "best.json").read_text())
    trials = res["trials"]
    return {"scheduler": kind, "wall_s": wall, "trials": len(trials),
            "finished": sum(t["status"] == "finished" for t in trials),
            "stopped": sum(t["status"] == "stopped" for t in trials),
            "errors": sum(t["status"] == "error" for t in trials),
            "train_steps": sum(t["steps"] for t in trials), "concurrency": res["concurrency"],
            "best_params": best["params"], "best_val_loss": best["val_loss"],
            "uptime_before": load_before, "uptime_after": uptime()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--grace", type=int, default=20, help="ASHA grace period (steps)")
    ap.add_argument("--rf", type=float, default=3, help="ASHA reduction factor")
    ap.add_argument("--order", default="none,asha", help="which sweep runs first")
    ap.add_argument("--out", default=str(REPO / "benchmarks/out/sweep"))
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    import ray
    from rayft import _env
    _env.apply()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": _env.worker_env()})
    runs = {k: one_sweep(out, k, a) for k in a.order.split(",")}
    ray.shutdown()
    ratio = runs["asha"]["wall_s"] / runs["none"]["wall_s"]
    same = runs["asha"]["best_params"] == runs["none"]["best_params"]
    summary = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join([sys.executable, *sys.argv]),
               "args": vars(a), "space": SPACE, "runs": runs, "wall_ratio_asha_over_none": ratio,
               "same_best_config": same}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    for k, r in runs.items():
        print(f"{k:>5}: {r['wall_s']:.0f} s, {r['finished']} finished / {r['stopped']} stopped / {r['errors']} errors, "
              f"{r['train_steps']} steps, best {r['best_params']} val {r['best_val_loss']:.4f} | "
              f"{r['uptime_before']} -> {r['uptime_after']}")
    print(f"wall ratio asha/none = {ratio:.2f}; same best config: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
