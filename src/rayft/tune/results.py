"""Results table, best trial and sweep.png, read from the trials' run directories. No Ray."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..objstore import shown
from ..storage import atomic_write_json, atomic_write_text, read_jsonl


def trial_row(trial_id: str, params: dict, run_dir: Path, error: str | None) -> dict:
    """One row: params, status, steps reached, last/best val loss, run dir.

    status: finished (all steps, report.json written), stopped (ASHA ended it early),
    error (the trial raised), incomplete (never reached a result: e.g. interrupted).
    """
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    vals = [(m["step"], m["val_loss"]) for m in metrics if m.get("val_loss") is not None]
    steps = max((m["step"] for m in metrics if "loss" in m), default=0)
    rep = None
    if (run_dir / "report.json").is_file():
        rep = json.loads((run_dir / "report.json").read_text())
    if error:
        status = "error"
    elif rep and rep.get("finished"):
        status = "finished"
    elif steps:
        status = "stopped"
    else:
        status = "incomplete"
    ck = sorted((run_dir / "checkpoints").glob("step_*/state.json"))
    return {"trial_id": trial_id, **{f"param:{k}": v for k, v in sorted(params.items())}, "status": status,
            "steps": steps, "val_loss": vals[-1][1] if vals else None,
            "best_val_loss": min(v for _, v in vals) if vals else None,
            "resumed_from": max((m.get("resumed_from") or 0 for m in metrics), default=0) or None,
            "wall_s": rep["wall_s"] if rep else None, "run_dir": str(run_dir),
            "checkpoint": str(ck[-1].parent) if ck else None, "error": error}


def pick_best(rows: list[dict]) -> dict | None:
    """Lowest final validation loss among trials that ran all their steps (only those have a
    complete run dir - report.json, adapter/, tokenizer/ - to hand to `rayft eval`)."""
    done = [r for r in rows if r["status"] == "finished" and r["val_loss"] is not None]
    return min(done, key=lambda r: (r["val_loss"], r["trial_id"])) if done else None


def write_results(sweep_dir: Path, rows: list[dict], best: dict | None, extra: dict,
                  local: dict | None = None) -> dict:
    """results.csv, results.json, best.json (+ best_config.yaml) and sweep.png; returns best.json.
    ``local``: trial id -> the local directory holding its files when run_dir names a bucket."""
    local = local or {}
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(sweep_dir / "results.csv", buf.getvalue())
    atomic_write_json(sweep_dir / "results.json", {**extra, "trials": rows})
    out = {}
    if best:
        run_dir = best["run_dir"]
        cfg_text = (Path(local.get(best["trial_id"], run_dir)) / "config.yaml").read_text()
        atomic_write_text(sweep_dir / "best_config.yaml", cfg_text)
        out = {"trial_id": best["trial_id"], "val_loss": best["val_loss"], "run_dir": best["run_dir"],
               "checkpoint": best["checkpoint"], "adapter": (f"{shown(run_dir)}/adapter" if "://" in run_dir else str(Path(run_dir) / "adapter")),
               "params": {k[6:]: v for k, v in best.items() if k.startswith("param:")},
               "config": str(sweep_dir / "best_config.yaml"),
               "eval_command": f"rayft eval --config configs/eval.yaml candidate={best['run_dir']}"}
        atomic_write_json(sweep_dir / "best.json", out)
    plot_sweep(rows, best, sweep_dir / "sweep.png", local)
    return out


def plot_sweep(rows: list[dict], best: dict | None, out: Path, local: dict | None = None) -> None:
    """Validation loss against step, one line per trial; stopped trials dashed, the best bold."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=110)
    for r in rows:
        pts = [(m["step"], m["val_loss"]) for m in read_jsonl(Path((local or {}).get(r["trial_id"], r["run_dir"])) / "metrics.jsonl")
               if m.get("val_loss") is not None]
        if not pts:
            continue
        is_best = best is not None and r["trial_id"] == best["trial_id"]
        label = r["trial_id"].rsplit("_", 1)[-1] + " " + ", ".join(
            f"{k[6:].split('.')[-1]}={_short(v)}" for k, v in r.items() if k.startswith("param:"))
        ax.plot(*zip(*pts), lw=2.5 if is_best else 1, ls="-" if r["status"] == "finished" else "--",
                marker="o" if is_best else ".", label=("best " if is_best else "") + label, zorder=3 if is_best else 2)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    ax.set_title(f"sweep: {len(rows)} trials (dashed: stopped early)")
    ax.grid(alpha=0.3)
    if len(rows) <= 24:  # beside the plot: inside, it hides the curves
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
