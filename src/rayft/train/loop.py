"""train_loop_per_worker: the ONLY caller of ray.train.* APIs in rayft.

Data order is fully determined by (seed, epoch, step): each worker pulls its shard
once (deterministic split, see launch.DeterministicSplit), orders it by row index and
walks a seeded per-epoch permutation. With model, optimizer, scheduler, step and every
worker's RNG restored from the checkpoint, a resumed run continues the exact same loss
curve as an uninterrupted one.
"""
from __future__ import annotations

import math
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..config import from_dict
from ..data.tokenize import collate
from ..storage import append_jsonl, atomic_write_text, read_jsonl
from . import checkpoint as ckpt_io
from .config import TrainConfig


def peak_rss_mb() -> float:
    """This process's peak resident set size (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def lr_lambda(warmup: int, total: int, min_ratio: float):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def _pull_shard(name: str) -> list[tuple[np.ndarray, np.ndarray, int]]:
    import ray.data
    import ray.train

    shard = ray.train.get_dataset_shard(name)
    ray.data.DataContext.get_current().enable_progress_bars = False  # one bar: the driver's
    if shard is None:
        return []
    rows = []
    for batch in shard.iter_batches(batch_size=1024, batch_format="numpy"):
        for idx, ids, lab, tr in zip(batch["row_idx"], batch["input_ids"], batch["labels"], batch["truncated"]):
            rows.append((np.asarray(ids), np.asarray(lab), int(idx), bool(tr)))
    rows.sort(key=lambda r: r[2])
    return rows


def build_model(cfg: TrainConfig, source: str, tok):
    from ..models.load import load_model

    model = load_model(source, tok, cfg.model.dtype, cfg.model.trust_remote_code, cfg.run.seed)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.train.method == "lora":
        from peft import LoraConfig, get_peft_model

        tm = cfg.lora.target_modules
        lcfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules="all-linear" if tm == ["all-linear"] else tm, task_type="CAUSAL_LM")
        torch.manual_seed(cfg.run.seed + 1)  # same adapter init on every worker
        model = get_peft_model(model, lcfg)
    return model


def _evaluate(model, rows, bs: int, pad_id: int, device) -> tuple[float, float]:
    """(sum of token losses, token count) over this worker's rows."""
    model.eval()
    tot, cnt = 0.0, 0.0
    with torch.no_grad():
        for i in range(0, len(rows), bs):
            b = collate([(r[0], r[1]) for r in rows[i:i + bs]], pad_id)
            b = {k: v.to(device) for k, v in b.items()}
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
            lab = b["labels"][:, 1:]
            lp = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),
                                                   lab.reshape(-1), ignore_index=-100, reduction="sum")
            tot += lp.item()
            cnt += (lab != -100).sum().item()
    model.train()
    return tot, cnt


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import torch.distributed as dist

    cfg = from_dict(TrainConfig, config["cfg"])
    source, run_dir = config["source"], Path(config["run_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    threads = cfg.scaling.torch_threads or max(1, int(round(cfg.scaling.cpus_per_worker)))
    torch.set_num_threads(threads)
    (run_dir / "workers").mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "workers" / f"rank{rank}.pid", str(os.getpid()))

    from ..models.load import load_tokenizer

    tok = load_tokenizer(source, cfg.model.trust_remote_code)
    model = build_model(cfg, source, tok)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(cfg.train.warmup_steps, cfg.train.max_steps, cfg.train.min_lr_ratio))

    step, resumed_from = 0, None
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            ckpt_io.load_trainable_weights(model, Path(d), cfg.train.method)
            state = ckpt_io.load_training_state(Path(d), opt, sched)
            step = int(state["step"])
            resumed_from = step
            if state.get("world_size") == world:
                ckpt_io.load_rng(Path(d) / f"rng_rank{rank}.safetensors")
            else:
                torch.manual_seed(cfg.run.seed * 1000 + rank + step)
    else:
        torch.manual_seed(cfg.run.seed * 1000 + rank)

    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    inner = model.module if hasattr(model, "module") else model
    pad_id = tok.pad_token_id

    train_rows, val_rows = _pull_shard("train"), _pull_shard("val")
    n_trunc = all_sum_early(dist, world, [sum(r[3] for r in train_rows), sum(r[3] for r in val_rows),
                                          len(train_rows), len(val_rows)])
    if rank == 0:
        from ..storage import atomic_write_json
        atomic_write_json(run_dir / "data_stats.json", {
            "train_truncated": int(n_trunc[0]), "val_truncated": int(n_trunc[1]),
            "train_rows_in_shards": int(n_trunc[2]), "val_rows_in_shards": int(n_trunc[3])})
    bs, accum = cfg.train.batch_size, cfg.train.grad_accum
    n_batches = len(train_rows) // bs
    if n_batches == 0:
        raise ValueError(f"worker {rank} has {len(train_rows)} training rows, fewer than train.batch_size={bs}")

    def micro_batch(m: int):
        epoch, j = divmod(m, n_batches)
        perm = np.random.default_rng(cfg.run.seed * 7919 + epoch).permutation(len(train_rows))
        return [(train_rows[i][0], train_rows[i][1]) for i in perm[j * bs:(j + 1) * bs]], epoch

    def all_sum(values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64)
        if world > 1:
            dist.all_reduce(t)
        return t.tolist()

    def val_loss() -> float | None:
        if not val_rows and world == 1:
            return None
        # The unwrapped module: DDP's forward syncs buffers (a collective), which would
        # deadlock when one worker has fewer val rows than another.
        s, c = _evaluate(inner, val_rows, bs, pad_id, device)
        s, c = all_sum([s, c])
        return s / c if c else None

    metrics_path = run_dir / "metrics.jsonl"
    if rank == 0:  # drop metrics logged after the checkpoint we resumed from
        kept = [r for r in read_jsonl(metrics_path) if r.get("step", 0) <= step]
        atomic_write_text(metrics_path, "".join(__import__("json").dumps(r) + "\n" for r in kept))

    def save_and_report(metrics: dict, final: bool) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=f"rayft-ckpt-{rank}-"))
        try:
            ckpt_io.save_rng(tmp / f"rng_rank{rank}.safetensors")
            if rank == 0:
                ckpt_io.save_model(inner, tok, tmp, cfg.train.method)
                ckpt_io.save_training_state(tmp, opt, sched, {
                    "step": step, "world_size": world, "final": final, "metrics": metrics,
                    "method": cfg.train.method, "base_model": source, "config": config["cfg"]})
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)),
                             checkpoint_dir_name=f"step_{step:07d}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    if step == 0:
        v0 = val_loss()
        if rank == 0 and v0 is not None:
            append_jsonl(metrics_path, {"step": 0, "val_loss": v0, "time": time.time()})

    model.train()
    launch_start = step
    win_loss, win_tokens, win_steps, t0 = 0.0, 0.0, 0, time.perf_counter()
    rss_peak = peak_rss_mb()
    stop_at = cfg.train.max_steps
    if cfg.train.stop_after_steps:
        stop_at = min(stop_at, launch_start + cfg.train.stop_after_steps)
    while step < stop_at:
        step_loss, step_tokens = 0.0, 0.0
        for a in range(accum):
            examples, epoch = micro_batch(step * accum + a)
            b = {k: v.to(device) for k, v in collate(examples, pad_id).items()}
            sync = a == accum - 1 or world == 1
            ctx_mgr = model.no_sync() if (not sync and hasattr(model, "no_sync")) else _null()
            with ctx_mgr:
                out = model(**b)
                (out.loss / accum).backward()
            step_loss += out.loss.item() / accum
            step_tokens += float(b["attention_mask"].sum().item())
        if cfg.train.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        gl, gt = all_sum([step_loss, step_tokens])
        gl /= world
        win_loss += gl
        win_tokens += gt
        win_steps += 1
        rss_peak = max(rss_peak, peak_rss_mb())
        last = step == stop_at
        do_log = step == 1 or step % cfg.train.log_every == 0 or last
        do_ckpt = step % cfg.train.checkpoint_every == 0 or last
        do_eval = last or (cfg.train.eval_every and step % cfg.train.eval_every == 0)
        if not (do_log or do_ckpt or do_eval):
            continue
        dt = time.perf_counter() - t0
        metrics = {"step": step, "epoch": epoch, "loss": gl, "loss_avg": win_loss / win_steps,
                   "lr": sched.get_last_lr()[0], "tokens_per_s": win_tokens / dt if dt > 0 else 0.0,
                   "tokens": win_tokens, "window_s": dt, "max_steps": cfg.train.max_steps}
        if do_eval:
            metrics["val_loss"] = val_loss()
        peaks = [0.0] * world
        if world > 1:
            gathered = [None] * world
            dist.all_gather_object(gathered, rss_peak)
            peaks = [float(x) for x in gathered]
        else:
            peaks = [rss_peak]
        metrics["peak_rss_mb"] = peaks
        if resumed_from is not None:
            metrics["resumed_from"] = resumed_from
        if rank == 0:
            append_jsonl(metrics_path, dict(metrics, time=time.time()))
        if do_ckpt:
            save_and_report(metrics, final=step == cfg.train.max_steps)
        else:
            ray.train.report(metrics)
        win_loss, win_tokens, win_steps, t0 = 0.0, 0.0, 0, time.perf_counter()


def all_sum_early(dist, world: int, values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if world > 1:
        dist.all_reduce(t)
    return t.tolist()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
