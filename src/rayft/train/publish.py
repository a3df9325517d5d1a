"""The publish phase of `rayft train`, on the driver after the TorchTrainer returned: copy the
last checkpoint's adapter/model into the run directory, write report.json, plot the loss,
answer the sample prompt, and turn a guard stop or a memory-watchdog stop into one error."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from ..config import ConfigError, saved_command, saved_config
from ..storage import atomic_write_json, read_jsonl
from .config import TrainConfig
from .datasets import Prepared


class TrainingDiverged(ConfigError):
    """The loss stayed NaN/Inf after guard.max_rollbacks rollbacks: the recipe needs changing."""


def publish(cfg: TrainConfig, p: Prepared, checked, wall_s: float, start_step: int) -> str:
    """Everything after training, in order; returns the run directory."""
    from .checkpoint import latest_checkpoint_dir, read_state
    from .remote import push

    run_dir = p.run_dir
    rows = read_jsonl(run_dir / "metrics.jsonl")
    events = [r for r in rows if "event" in r]           # the training guard's
    metrics = [r for r in rows if "event" not in r]
    diverged = next((e for e in events if e["event"] == "nonfinite_stop"), None)
    ck = latest_checkpoint_dir(run_dir)
    if ck is None and not diverged:
        raise RuntimeError(f"training finished without a checkpoint under {run_dir / 'checkpoints'}")
    state = read_state(ck) if ck else {"step": 0}
    sub = "adapter" if cfg.train.method == "lora" else "model"
    if ck and not diverged:
        copy_into_place(ck / sub, run_dir / sub)
        copy_into_place(ck / "tokenizer", run_dir / "tokenizer")

    report = build_report(cfg, p, metrics, state, wall_s, start_step)
    report["guard"] = {"rollbacks": sum(e["event"] == "nonfinite_rollback" for e in events),
                       "lr_scale": (state.get("guard") or {}).get("lr_scale", 1.0),
                       "warnings": sum(e["event"] == "val_loss_rising" for e in events),
                       "stopped": diverged, "events": events}
    if diverged:
        report["finished"] = False
        atomic_write_json(run_dir / "report.json", report)
        push(cfg, run_dir)
        raise TrainingDiverged(f"{diverged['message']} (guard.max_rollbacks={cfg.guard.max_rollbacks}); "
                               f"last healthy checkpoint: {ck or 'none'}; try a lower train.lr. "
                               f"Report: {run_dir / 'report.json'}")
    report["memory"] = dict(checked.report(), budget_gb=cfg.memory.budget_gb, stopped=state.get("stopped"))
    from .plot import plot_loss
    plot_loss(metrics, run_dir / "loss.png", f"{cfg.model.name} {cfg.train.method} - {run_dir.name}")
    if cfg.generate.prompt and state["step"] >= cfg.train.max_steps:
        report["sample"] = {"prompt": cfg.generate.prompt, "answer": sample_generate(run_dir, p.source, cfg)}
        print(f"[rayft] sample prompt: {cfg.generate.prompt}\n[rayft] answer (reloaded from {run_dir / sub}): "
              f"{report['sample']['answer']}", file=sys.stderr)
    atomic_write_json(run_dir / "report.json", report)
    remote = push(cfg, run_dir)  # run.dir=s3://...: published into the bucket, report.json last
    print(f"[rayft] loss {report['loss_first']:.4f} -> {report['loss_last']:.4f} | val loss "
          f"{_f(report['val_loss_start'])} -> {_f(report['val_loss'])} | {report['tokens_per_s']:.0f} tokens/s | "
          f"peak RSS per worker {', '.join(f'{x:.0f}' for x in report['peak_rss_mb'])} MB | "
          f"{report['wall_s']:.0f} s", file=sys.stderr)
    if state.get("stopped"):  # the memory watchdog stopped it: resumable, but not a success
        from .memory import MemoryBudgetError
        from .watchdog import stop_message
        st = state["stopped"]
        raise MemoryBudgetError(stop_message(st["rank"], st["rss_mb"] * 2**20, st["budget_gb"], st["stop_fraction"],
                                             state["step"], str(ck)))
    return remote or str(run_dir)


def copy_into_place(src: Path, dst: Path) -> None:
    """Copy a directory into place atomically (copy to a temp name, then rename)."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    old = dst.with_name(dst.name + ".old")
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)


def build_report(cfg: TrainConfig, p: Prepared, metrics: list[dict], state: dict, wall: float,
                 start_step: int) -> dict:
    from .checkpoint import latest_checkpoint_dir

    train_m = [m for m in metrics if "loss" in m]
    vals = [m for m in metrics if m.get("val_loss") is not None]
    tok_s = [m["tokens"] / m["window_s"] for m in train_m if m.get("window_s")]
    tot_tokens = sum(m["tokens"] for m in train_m)
    tot_time = sum(m["window_s"] for m in train_m)
    peaks: list[float] = []
    for m in train_m:
        peaks = [max(a, b) for a, b in zip(peaks, m["peak_rss_mb"])] if peaks else list(m["peak_rss_mb"])
    rows_unused = p.stats["train_rows"] % cfg.scaling.num_workers
    return {
        "run_dir": str(p.run_dir), "rows_read": p.stats["rows_read"], "rows_rejected": p.stats["rows_rejected"],
        "rows_kept": p.stats["train_rows"] + p.stats["val_rows"],
        "rows_other_language": p.stats["rows_other_language"],
        "train_rows": p.stats["train_rows"], "val_rows": p.stats["val_rows"],
        "train_rows_unused_for_equal_shards": rows_unused,
        "steps": state["step"], "max_steps": cfg.train.max_steps, "resumed_from_step": start_step or None,
        "finished": state["step"] >= cfg.train.max_steps,
        "loss_first": train_m[0]["loss"] if train_m else None,
        "loss_last": train_m[-1]["loss"] if train_m else None,
        "val_loss_start": next((m["val_loss"] for m in vals if m["step"] == 0), None),
        "val_loss": vals[-1]["val_loss"] if vals else None,
        "tokens_per_s": tot_tokens / tot_time if tot_time else 0.0,
        "tokens_per_s_windows": tok_s,
        # tokens_per_s counts every position computed (padding included); useful_tokens_per_s the
        # non-padding tokens (rows of runs before data.packing counted those as tokens)
        "useful_tokens_per_s": (sum(m.get("useful_tokens", m["tokens"]) for m in train_m) / tot_time
                                if tot_time else 0.0),
        "peak_rss_mb": peaks, "wall_s": wall, "files": p.stats["files"], "sources": p.stats.get("sources", []),
        "checkpoint": str(latest_checkpoint_dir(p.run_dir)), "config": saved_config(cfg),
        "command": saved_command(sys.argv),
    }


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def sample_generate(run_dir: Path, source: str, cfg: TrainConfig) -> str:
    """Reload the saved adapter (or full model) from disk and answer the sample prompt."""
    import torch

    from ..data.tokenize import prompt_text
    from ..models.load import load_model, load_tokenizer

    tok = load_tokenizer(source, cfg.model.trust_remote_code)
    if cfg.train.method == "lora":
        from peft import PeftModel
        base = load_model(source, tok, "float32", cfg.model.trust_remote_code, cfg.run.seed)
        model = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
    else:
        model = load_model(str(run_dir / "model"), tok, "float32")
    model.eval()
    text = prompt_text(tok, cfg.data.system_prompt, "", cfg.generate.prompt)
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=cfg.generate.max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
