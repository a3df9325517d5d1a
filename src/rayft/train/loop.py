"""train_loop_per_worker: the ONLY caller of ray.train.* APIs in rayft.

Data order is fully determined by (seed, epoch, step): each worker pulls its shard
once (deterministic split, see launch._ray_datasets), orders it by row index and
walks a seeded per-epoch permutation. With model, optimizer, scheduler, step and every
worker's RNG restored from the checkpoint, a resumed run continues the exact same loss
curve as an uninterrupted one. How a step is taken (DDP or DeepSpeed ZeRO) lives in
engine.py / zero.py; the memory watchdog in watchdog.py.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..config import from_dict
from ..data.tokenize import collate
from ..storage import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from . import checkpoint as ckpt_io
from .config import TrainConfig
from .engine import build_model, lr_lambda  # noqa: F401  (re-exported: benchmarks import them here)
from .watchdog import GB, RssWatchdog, peak_rss_bytes, stop_message


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB."""
    return peak_rss_bytes() / 2**20


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


def _evaluate(model, rows, bs: int, pad_id: int, device, n_batches: int | None = None) -> tuple[float, float]:
    """(sum of token losses, token count) over this worker's rows.

    ``n_batches`` > this worker's own count pads with loss-free dummy batches: under ZeRO-3
    every forward gathers parameters collectively, so all workers must run as many."""
    model.eval()
    tot, cnt = 0.0, 0.0
    own = -(-len(rows) // bs)
    dummy = [(np.array([pad_id, pad_id]), np.array([-100, -100]))]
    with torch.no_grad():
        for j in range(max(own, n_batches or 0)):
            ex = [(r[0], r[1]) for r in rows[j * bs:(j + 1) * bs]] or dummy
            b = {k: v.to(device) for k, v in collate(ex, pad_id).items()}
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

    from ..evaluate.guard import TrainingGuard
    from ..models.load import load_tokenizer
    from .engine import make_engine, set_lr_scale

    cfg = from_dict(TrainConfig, config["cfg"])
    source, run_dir = config["source"], Path(config["run_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    threads = cfg.scaling.torch_threads or max(1, int(round(cfg.scaling.cpus_per_worker)))
    torch.set_num_threads(threads)
    (run_dir / "workers").mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "workers" / f"rank{rank}.pid", str(os.getpid()))
    mem = cfg.memory
    watchdog = RssWatchdog(mem.budget_gb * mem.stop_fraction * GB if mem.budget_gb > 0 else 0,
                           mem.sample_interval_s)
    watchdog.start()
    rss_start = watchdog.sample()

    tok = load_tokenizer(source, cfg.model.trust_remote_code)
    rss_runtime = watchdog.sample()  # torch + transformers + ray.train (+ tokenizer): the fixed cost
    engine = make_engine(cfg, source, tok, world, config.get("deepspeed"))

    step, resumed_from = 0, None
    guard = TrainingGuard(cfg.guard)
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            state = engine.restore(Path(d), rank, world)
            step = int(state["step"])
            resumed_from = step
            if state.get("guard"):  # rollbacks so far and the learning-rate scale survive a resume
                guard = TrainingGuard.from_state_dict(state["guard"])
                guard.cfg = cfg.guard
                set_lr_scale(engine.sched, cfg.train.lr, guard.lr_scale)
            if state.get("world_size") == world:
                ckpt_io.load_rng(Path(d) / f"rng_rank{rank}.safetensors")
            else:
                torch.manual_seed(cfg.run.seed * 1000 + rank + step)
    else:
        torch.manual_seed(cfg.run.seed * 1000 + rank)

    engine.wrap(ray.train.torch.prepare_model)
    device = ray.train.torch.get_device()
    rss_built = watchdog.sample()
    pad_id = tok.pad_token_id

    train_rows, val_rows = _pull_shard("train"), _pull_shard("val")
    n_trunc = all_sum_early(dist, world, [sum(r[3] for r in train_rows), sum(r[3] for r in val_rows),
                                          len(train_rows), len(val_rows)])
    if rank == 0:
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

    def gather(obj) -> list:
        if world == 1:
            return [obj]
        out = [None] * world
        dist.all_gather_object(out, obj)
        return out

    def val_loss() -> float | None:
        if not val_rows and world == 1:
            return None
        n = None
        if engine.lockstep_eval:
            n = int(max(gather(-(-len(val_rows) // bs))))
        s, c = _evaluate(engine.eval_model, val_rows, bs, pad_id, device, n)
        s, c = all_sum([s, c])
        return s / c if c else None

    metrics_path = run_dir / "metrics.jsonl"
    mem_rows = gather({"rss_start_mb": rss_start / 2**20, "rss_runtime_mb": rss_runtime / 2**20,
                       "rss_built_mb": rss_built / 2**20})
    def truncate_metrics(upto: int) -> None:
        """Drop metrics logged after step ``upto`` (they are re-run); guard events stay."""
        kept = [r for r in read_jsonl(metrics_path) if r.get("step", 0) <= upto or "event" in r]
        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    if rank == 0:  # drop metrics logged after the checkpoint we resumed from
        truncate_metrics(step)
        atomic_write_json(run_dir / "memory.json", {k: [r[k] for r in mem_rows] for k in mem_rows[0]}
                          | {"strategy": cfg.train.strategy, "budget_gb": mem.budget_gb})

    def save_and_report(metrics: dict, final: bool, extra: dict | None = None) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=f"rayft-ckpt-{rank}-"))
        try:
            ckpt_io.save_rng(tmp / f"rng_rank{rank}.safetensors")
            engine.save(tmp, rank, world, {
                "step": step, "world_size": world, "final": final, "metrics": metrics,
                "method": cfg.train.method, "strategy": cfg.train.strategy, "base_model": source,
                "config": config["cfg"], **(extra or {})})
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)),
                             checkpoint_dir_name=f"step_{step:07d}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def log_events(act) -> None:
        for ev in act.events:
            if rank == 0:
                print(f"[rayft] guard: {ev['message']}", flush=True)
                append_jsonl(metrics_path, dict(ev, time=time.time()))

    def rollback(act) -> None:
        """Restore the last healthy checkpoint (step 0: rebuild the initial model, the old one
        freed first) and scale the learning rate; training continues from that step with a
        fresh metrics window."""
        nonlocal engine, step, win_loss, win_tokens, win_steps, t0
        to = int(act.rollback_to)
        if to == 0:
            engine = None
            import gc
            gc.collect()
            engine = make_engine(cfg, source, tok, world, config.get("deepspeed"))
            torch.manual_seed(cfg.run.seed * 1000 + rank)
            engine.wrap(ray.train.torch.prepare_model)
        else:
            d = run_dir / "checkpoints" / f"step_{to:07d}"
            if not (d / "state.json").exists():
                raise RuntimeError(f"guard: rollback checkpoint {d} is missing")
            engine.restore(d, rank, world)
            ckpt_io.load_rng(d / f"rng_rank{rank}.safetensors")
        set_lr_scale(engine.sched, cfg.train.lr, act.lr_scale)
        engine.model.train()
        step = to
        if rank == 0:
            truncate_metrics(to)
        if world > 1:
            dist.barrier()
        win_loss, win_tokens, win_steps, t0 = 0.0, 0.0, 0, time.perf_counter()

    if step == 0:
        v0 = val_loss()
        if rank == 0 and v0 is not None:
            append_jsonl(metrics_path, {"step": 0, "val_loss": v0, "time": time.time()})

    engine.model.train()
    launch_start = step
    win_loss, win_tokens, win_steps, t0 = 0.0, 0.0, 0, time.perf_counter()
    stop_at = cfg.train.max_steps
    if cfg.train.stop_after_steps:
        stop_at = min(stop_at, launch_start + cfg.train.stop_after_steps)
    while step < stop_at:
        step_loss, step_tokens = 0.0, 0.0
        for a in range(accum):
            examples, epoch = micro_batch(step * accum + a)
            b = {k: v.to(device) for k, v in collate(examples, pad_id).items()}
            step_loss += engine.micro_step(b, a, accum) / accum
            step_tokens += float(b["attention_mask"].sum().item())
        engine.step()
        step += 1
        if step in cfg.guard.inject_nan_at and not any(
                e.get("step") == step for e in guard.events if e["event"].startswith("nonfinite")):
            step_loss = _poison(engine)
        # the watchdog's flag rides on the loss all-reduce: every worker learns of a trip together
        gl, gt, trips = all_sum([step_loss, step_tokens, float(watchdog.tripped.is_set())])
        gl /= world
        act = guard.on_step(step, gl)
        log_events(act)
        if act.kind == "stop":
            break
        if act.kind == "rollback":
            rollback(act)
            continue
        win_loss += gl
        win_tokens += gt
        win_steps += 1
        mem_stop = trips > 0
        last = step == stop_at or mem_stop
        do_log = step == 1 or step % cfg.train.log_every == 0 or last
        do_ckpt = step % cfg.train.checkpoint_every == 0 or last
        do_eval = (last and not mem_stop) or (cfg.train.eval_every and step % cfg.train.eval_every == 0)
        if not (do_log or do_ckpt or do_eval):
            continue
        dt = time.perf_counter() - t0
        metrics = {"step": step, "epoch": epoch, "loss": gl, "loss_avg": win_loss / win_steps,
                   "lr": engine.lr(), "tokens_per_s": win_tokens / dt if dt > 0 else 0.0,
                   "tokens": win_tokens, "window_s": dt, "max_steps": cfg.train.max_steps}
        if do_eval:
            metrics["val_loss"] = val_loss()
        watchdog.sample()
        rows = gather((peak_rss_mb(), watchdog.at_trip / 2**20))
        metrics["peak_rss_mb"] = [float(r[0]) for r in rows]
        extra = None
        if mem_stop:
            who = max(range(world), key=lambda r: rows[r][1])
            extra = {"stopped": {"reason": "memory", "rank": who, "rss_mb": rows[who][1],
                                 "peak_rss_mb": rows[who][0], "budget_gb": mem.budget_gb,
                                 "stop_fraction": mem.stop_fraction}}
            metrics["memory_stop"] = extra["stopped"]
        if do_eval and metrics["val_loss"] is not None:
            act = guard.on_val_loss(step, metrics["val_loss"])
            log_events(act)
            if act.kind == "stop":
                break
            if act.kind == "rollback":
                rollback(act)
                continue
        if do_ckpt:
            guard.on_checkpoint(step)  # every loss since the last one was finite (else we rolled back)
            extra = dict(extra or {}, guard=guard.state_dict())
        if resumed_from is not None:
            metrics["resumed_from"] = resumed_from
        if rank == 0:
            append_jsonl(metrics_path, dict(metrics, time=time.time()))
        if do_ckpt:
            save_and_report(metrics, final=step == cfg.train.max_steps, extra=extra)
        else:
            ray.train.report(metrics)
        if mem_stop:
            if rank == 0:
                print(stop_message(extra["stopped"]["rank"], extra["stopped"]["rss_mb"] * 2**20, mem.budget_gb,
                                   mem.stop_fraction, step, f"step_{step:07d}"), flush=True)
            break
        win_loss, win_tokens, win_steps, t0 = 0.0, 0.0, 0, time.perf_counter()
    watchdog.stop()
    # the last checkpoint save (ZeRO gathers) came after the last report: record the true peak
    end_peaks = gather(peak_rss_mb())
    if rank == 0:
        mem_path = run_dir / "memory.json"
        atomic_write_json(mem_path, dict(json.loads(mem_path.read_text()), peak_rss_end_mb=end_peaks))
    _cleanup_swap(config, rank, world, dist)


def _poison(engine) -> float:
    """Fault injection (guard.inject_nan_at): what a diverging step leaves behind, NaN weights
    and a NaN loss. Only the guard's rollback can recover from it."""
    with torch.no_grad():
        for p in engine.model.parameters():
            if p.requires_grad and p.numel():
                p.fill_(float("nan"))
    return float("nan")


def _cleanup_swap(config: dict, rank: int, world: int, dist) -> None:
    """NVMe offload swap files are scratch (restored from the checkpoint on resume): remove them."""
    ds = config.get("deepspeed") or {}
    paths = {v.get("nvme_path") for k, v in ds.get("zero_optimization", {}).items()
             if k.startswith("offload_") and isinstance(v, dict) and v.get("nvme_path")}
    if not paths:
        return
    if world > 1:
        dist.barrier()
    if rank == 0:
        for p in paths:
            shutil.rmtree(Path(p) / "zero_stage_3", ignore_errors=True)


def all_sum_early(dist, world: int, values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if world > 1:
        dist.all_reduce(t)
    return t.tolist()
