"""What every Ray Train worker runs: ``train_loop_per_worker``, a short loop over named steps.

The worker's state lives in one ``Worker`` object (engine, step, guard, metrics window,
data shards); the loop body reads as the recipe of one optimizer step:

    optimizer_step -> guard on the training loss -> (log | validate | checkpoint) -> next

Data order is fully determined by (seed, epoch, step): each worker pulls its shard once
(deterministic split on the driver, see datasets.tokenized_datasets), orders it by row index
and walks a seeded per-epoch permutation. With model, optimizer, scheduler, step and every
worker's RNG restored from the checkpoint, a resumed run continues the exact same loss curve
as an uninterrupted one.

Ray Train on the worker side is all here: ``get_context``, ``get_checkpoint``,
``get_dataset_shard``, ``report`` with a ``Checkpoint``, ``torch.prepare_model`` and
``torch.get_device``. On the driver side, launch.py builds the TorchTrainer, datasets.py its
DataConfig, and tune/trial.py and tune/reaper.py add Ray Train callbacks. How a step is taken (DDP or DeepSpeed ZeRO) lives in
engine.py / zero.py, what to do on NaN or rising validation loss in guard.py, the memory
watchdog in watchdog.py.
"""
from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import from_dict, mask_secrets
from ..data.packing import check_isolation, collate_packed, pack_examples
from ..data.tokenize import collate
from ..storage import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from . import checkpoint as ckpt_io
from .build import epoch_order_seed, worker_torch_seed
from .config import TrainConfig
from .memory import GB
from .raymetrics import TrainMetrics
from .watchdog import RssWatchdog, peak_rss_bytes, stop_message

Row = tuple  # (input_ids, labels, row_idx, truncated)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's per-worker function. ``config``: {"cfg": TrainConfig as a dict, "source":
    resolved model source, "run_dir", "deepspeed": final DeepSpeed dict or None}."""
    w = Worker(config)                        # 1. tokenizer, engine, checkpoint restore, data shards
    w.validate_at_start()                     # 2. step-0 validation loss (fresh runs)
    while w.step < w.stop_at:
        loss, counts, mem_stop = w.optimizer_step()   # 3. accumulated micro-batches + one update
        kind = w.on_guard(w.guard.on_step(w.step, loss))  # 4. NaN/Inf -> rollback or stop
        if kind == "stop":
            break
        if kind == "rollback":
            continue
        w.window.add(loss, counts)
        due = w.due(mem_stop)
        if not due:
            continue
        metrics = w.metrics(due, mem_stop)    # 5. metrics window (+ validation, + peak RSS)
        if metrics.get("val_loss") is not None:            # validated: NaN -> rollback or stop
            kind = w.on_guard(w.guard.on_val_loss(w.step, metrics["val_loss"]))
            if kind == "stop":
                break
            if kind == "rollback":
                continue
        w.report(metrics, checkpoint="checkpoint" in due)  # 6. metrics.jsonl + Ray Train report/checkpoint
        if mem_stop:
            w.print_memory_stop(metrics["memory_stop"])
            break
        w.window.reset()
    w.finish()                                # 7. final peak RSS, scratch cleanup


@dataclass
class Window:
    """Training metrics accumulated since the last logged step."""

    loss: float = 0.0
    tokens: float = 0.0         # positions computed, padding included
    useful_tokens: float = 0.0  # non-padding tokens
    examples: float = 0.0
    steps: int = 0
    last_loss: float = 0.0
    t0: float = field(default_factory=time.perf_counter)

    def add(self, loss: float, counts: tuple[float, float, float]) -> None:
        self.last_loss = loss
        self.loss += loss
        self.tokens += counts[0]
        self.useful_tokens += counts[1]
        self.examples += counts[2]
        self.steps += 1

    def reset(self) -> None:
        self.loss, self.tokens, self.steps, self.last_loss, self.t0 = 0.0, 0.0, 0, 0.0, time.perf_counter()
        self.useful_tokens = self.examples = 0.0


class Shards:
    """This worker's rows, pulled once from Ray Data and ordered by row index. With
    ``pack_len`` (data.packing) the units a micro-batch is drawn from are packed rows, packed
    once here in a fixed seeded order (rayft.data.packing), so resume stays exact."""

    def __init__(self, rank: int, batch_size: int, seed: int, pack_len: int = 0):
        self.train, self.val = _pull_shard("train"), _pull_shard("val")
        self.rank, self.bs, self.seed = rank, batch_size, seed
        self.packed = pack_len > 0
        self.units = (pack_examples([(r[0], r[1]) for r in self.train], pack_len, epoch_order_seed(seed, -1))
                      if self.packed else [(r[0], r[1]) for r in self.train])
        self.n_batches = len(self.units) // batch_size

    def check(self) -> None:
        if self.n_batches == 0:
            what = f"{len(self.units)} packed rows" if self.packed else f"{len(self.train)} training rows"
            raise ValueError(f"worker {self.rank} has {what}, fewer than train.batch_size={self.bs}")

    def micro_batch(self, m: int) -> tuple[list[tuple], int]:
        """Micro-batch number ``m`` of the run (across epochs) and its epoch."""
        epoch, j = divmod(m, self.n_batches)
        perm = np.random.default_rng(epoch_order_seed(self.seed, epoch)).permutation(len(self.units))
        return [self.units[i] for i in perm[j * self.bs:(j + 1) * self.bs]], epoch

    def collate(self, units: list[tuple], pad_id: int) -> tuple[dict, tuple[float, float, float]]:
        """A micro-batch's tensors and its (positions, non-padding tokens, examples)."""
        b = collate_packed(units, pad_id) if self.packed else collate(units, pad_id)
        return b, (float(b["input_ids"].numel()), float(sum(len(u[0]) for u in units)),
                   float(sum(len(u[3]) for u in units) if self.packed else len(units)))


class Faults:
    """Test-only fault injection, a no-op unless ``guard.inject_nan_at`` lists steps.

    At each listed step (the first time it runs: a step already answered by a guard rollback
    is not poisoned again, also after a resume) it leaves what a diverging step leaves
    behind: NaN weights and a NaN loss. Only the guard's rollback can recover from it."""

    def __init__(self, steps: list[int]):
        self.steps = set(steps)

    def after_step(self, step: int, loss: float, engine, guard) -> float:
        if step not in self.steps or any(e.get("step") == step for e in guard.events
                                         if e["event"].startswith("nonfinite")):
            return loss
        with torch.no_grad():
            for p in engine.model.parameters():
                if p.requires_grad and p.numel():
                    p.fill_(float("nan"))
        return float("nan")


class Worker:
    """One training worker's whole state and the named steps of the loop."""

    def __init__(self, config: dict):
        import ray.train

        from ..models.load import load_tokenizer
        from .guard import TrainingGuard

        self.config = config
        self.cfg = cfg = from_dict(TrainConfig, config["cfg"])
        self.source, self.run_dir = config["source"], Path(config["run_dir"])
        self.metrics_path = self.run_dir / "metrics.jsonl"
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        torch.set_num_threads(cfg.scaling.torch_threads or max(1, int(round(cfg.scaling.cpus_per_worker))))
        (self.run_dir / "workers").mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "workers" / f"rank{self.rank}.pid", str(os.getpid()))
        mem = cfg.memory
        self.watchdog = RssWatchdog(mem.budget_gb * mem.stop_fraction * GB if mem.budget_gb > 0 else 0,
                                    mem.sample_interval_s)
        self.watchdog.start()
        rss_start = self.watchdog.sample()
        self.tok = load_tokenizer(self.source, cfg.model.trust_remote_code)
        rss_runtime = self.watchdog.sample()  # torch + transformers + ray.train (+ tokenizer): the fixed cost

        self.engine = self._new_engine()
        self.guard = TrainingGuard(cfg.guard)
        self.faults = Faults(cfg.guard.inject_nan_at)
        self.step, self.resumed_from = 0, None
        self._restore_or_seed()
        self.engine.wrap(ray.train.torch.prepare_model)
        self.device = ray.train.torch.get_device()
        rss_built = self.watchdog.sample()

        self.data = Shards(self.rank, cfg.train.batch_size, cfg.run.seed,
                           cfg.data.max_seq_len if cfg.data.packing else 0)
        if cfg.data.packing:  # prove on this model that packed examples cannot see each other
            check_isolation(self.engine.eval_model, self.device, len(self.tok))
        self._write_data_stats()
        self.data.check()
        mem_rows = self.gather({"rss_start_mb": rss_start / 2**20, "rss_runtime_mb": rss_runtime / 2**20,
                                "rss_built_mb": rss_built / 2**20})
        if self.rank == 0:
            self._truncate_metrics(self.step)  # metrics logged after the checkpoint we resumed from are re-run
            atomic_write_json(self.run_dir / "memory.json", {k: [r[k] for r in mem_rows] for k in mem_rows[0]}
                              | {"strategy": cfg.train.strategy, "budget_gb": mem.budget_gb})
        self.stop_at = cfg.train.max_steps
        if cfg.train.stop_after_steps:
            self.stop_at = min(self.stop_at, self.step + cfg.train.stop_after_steps)
        self.epoch = 0
        self.window = Window()
        self.raymetrics = TrainMetrics(cfg.run.name, self.rank)  # Ray dashboard / Prometheus gauges

    # ---- set-up ------------------------------------------------------------------------------
    def _new_engine(self):
        from .engine import make_engine

        return make_engine(self.cfg, self.source, self.tok, self.world, self.config.get("deepspeed"))

    def _restore_or_seed(self) -> None:
        """Resume from Ray Train's checkpoint (model, optimizer, schedule, step, guard, RNG), or
        seed this worker's torch RNG for a fresh start."""
        import ray.train

        from .build import set_lr_scale
        from .guard import TrainingGuard

        seed = self.cfg.run.seed
        restored = ray.train.get_checkpoint()
        if restored is None:
            torch.manual_seed(worker_torch_seed(seed, self.rank))
            return
        with restored.as_directory() as d:
            state = self.engine.restore(Path(d), self.rank, self.world)
            self.step = self.resumed_from = int(state["step"])
            if state.get("guard"):  # rollbacks so far and the learning-rate scale survive a resume
                self.guard = TrainingGuard.from_state_dict(state["guard"])
                self.guard.cfg = self.cfg.guard
                set_lr_scale(self.engine.sched, self.cfg.train.lr, self.guard.lr_scale)
            if state.get("world_size") == self.world:
                ckpt_io.load_rng(Path(d) / f"rng_rank{self.rank}.safetensors")
            else:
                torch.manual_seed(worker_torch_seed(seed, self.rank, self.step))

    def _write_data_stats(self) -> None:
        d = self.data
        n = self.all_sum([sum(r[3] for r in d.train), sum(r[3] for r in d.val), len(d.train), len(d.val)])
        if self.rank == 0:
            atomic_write_json(self.run_dir / "data_stats.json", {
                "train_truncated": int(n[0]), "val_truncated": int(n[1]),
                "train_rows_in_shards": int(n[2]), "val_rows_in_shards": int(n[3])})

    # ---- collectives ---------------------------------------------------------------------
    def all_sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64)
        if self.world > 1:
            import torch.distributed as dist
            dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist
            dist.barrier()

    # ---- the named steps of the loop -------------------------------------------------------
    def validate_at_start(self) -> None:
        if self.step == 0:
            v0 = self.val_loss()
            if self.rank == 0 and v0 is not None:
                append_jsonl(self.metrics_path, {"step": 0, "val_loss": v0, "time": time.time()})
        self.engine.model.train()
        self.window.reset()

    def optimizer_step(self) -> tuple[float, tuple, bool]:
        """grad_accum micro-batches and one optimizer step. Returns the step's mean loss over
        all workers, its (positions, non-padding tokens, examples) over all workers, and whether
        any worker's memory watchdog tripped (its flag rides on the loss all-reduce: every worker
        learns together)."""
        accum, loss, counts = self.cfg.train.grad_accum, 0.0, np.zeros(3)
        for a in range(accum):
            units, self.epoch = self.data.micro_batch(self.step * accum + a)
            b, c = self.data.collate(units, self.tok.pad_token_id)
            b = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in b.items()}
            loss += self.engine.micro_step(b, a, accum) / accum
            counts += c
        self.engine.step()
        self.step += 1
        self.raymetrics.add_tokens(counts[0])  # this worker's own tokens (counts are summed below)
        loss = self.faults.after_step(self.step, loss, self.engine, self.guard)
        gl, *totals, trips = self.all_sum([loss, *counts.tolist(), float(self.watchdog.tripped.is_set())])
        return gl / self.world, tuple(totals), trips > 0

    def on_guard(self, act) -> str:
        """The one handler for the guard's actions (after a training step or a validation):
        log its events; on "rollback" restore the healthy checkpoint. Returns ``act.kind``:
        "stop" ends the loop, "rollback" restarts it from the restored step."""
        for ev in act.events:
            if self.rank == 0:
                print(f"[rayft] guard: {ev['message']}", flush=True)
                append_jsonl(self.metrics_path, dict(ev, time=time.time()))
        if act.kind == "rollback":
            self.rollback(int(act.rollback_to), act.lr_scale)
        return act.kind

    def rollback(self, to: int, lr_scale: float) -> None:
        """Restore the last healthy checkpoint (step 0: rebuild the initial model, the old one
        freed first) and scale the learning rate; training continues from that step with a
        fresh metrics window."""
        import ray.train

        from .build import set_lr_scale

        if to == 0:
            self.engine = None
            gc.collect()
            self.engine = self._new_engine()
            torch.manual_seed(worker_torch_seed(self.cfg.run.seed, self.rank))
            self.engine.wrap(ray.train.torch.prepare_model)
        else:
            d = self.run_dir / "checkpoints" / f"step_{to:07d}"
            if not (d / "state.json").exists():
                raise RuntimeError(f"guard: rollback checkpoint {d} is missing")
            self.engine.restore(d, self.rank, self.world)
            ckpt_io.load_rng(d / f"rng_rank{self.rank}.safetensors")
        set_lr_scale(self.engine.sched, self.cfg.train.lr, lr_scale)
        self.engine.model.train()
        self.step = to
        if self.rank == 0:
            self._truncate_metrics(to)
        self.barrier()
        self.window.reset()

    def due(self, mem_stop: bool) -> set[str]:
        """What this step owes: "log", "checkpoint", "eval" (empty: just train on)."""
        t, s = self.cfg.train, self.step
        last = s == self.stop_at or mem_stop
        out = set()
        if s == 1 or s % t.log_every == 0 or last:
            out.add("log")
        if s % t.checkpoint_every == 0 or last:
            out.add("checkpoint")
        if (last and not mem_stop) or (t.eval_every and s % t.eval_every == 0):
            out.add("eval")
        return out

    def metrics(self, due: set[str], mem_stop: bool) -> dict:
        """The metrics row of this step: window averages, lr, throughput, validation loss when
        due, every worker's peak RSS, and who tripped the memory watchdog."""
        w, dt = self.window, time.perf_counter() - self.window.t0
        m = {"step": self.step, "epoch": self.epoch, "loss": w.last_loss,
             "loss_avg": w.loss / w.steps, "lr": self.engine.lr(),
             "tokens_per_s": w.tokens / dt if dt > 0 else 0.0, "tokens": w.tokens, "window_s": dt,
             "useful_tokens_per_s": w.useful_tokens / dt if dt > 0 else 0.0, "useful_tokens": w.useful_tokens,
             "examples": w.examples,
             "max_steps": self.cfg.train.max_steps}
        if "eval" in due:
            m["val_loss"] = self.val_loss()
        self.watchdog.sample()
        rows = self.gather((peak_rss_mb(), self.watchdog.at_trip / 2**20))
        m["peak_rss_mb"] = [float(r[0]) for r in rows]
        if mem_stop:
            mem = self.cfg.memory
            who = max(range(self.world), key=lambda r: rows[r][1])
            m["memory_stop"] = {"reason": "memory", "rank": who, "rss_mb": rows[who][1],
                                "peak_rss_mb": rows[who][0], "budget_gb": mem.budget_gb,
                                "stop_fraction": mem.stop_fraction}
        if self.resumed_from is not None:
            m["resumed_from"] = self.resumed_from
        return m

    def report(self, metrics: dict, checkpoint: bool) -> None:
        """Append the metrics row (rank 0) and report it to Ray Train, with a checkpoint when due."""
        import ray.train

        self.raymetrics.record(metrics, peak_rss_bytes())
        extra = {"stopped": metrics["memory_stop"]} if "memory_stop" in metrics else {}
        if checkpoint:
            self.guard.on_checkpoint(self.step)  # every loss since the last one was finite (else we rolled back)
            extra["guard"] = self.guard.state_dict()
        if self.rank == 0:
            append_jsonl(self.metrics_path, dict(metrics, time=time.time()))
        if not checkpoint:
            ray.train.report(metrics)
            return
        tmp = Path(tempfile.mkdtemp(prefix=f"rayft-ckpt-{self.rank}-"))
        try:
            ckpt_io.save_rng(tmp / f"rng_rank{self.rank}.safetensors")
            cfg = self.cfg
            self.engine.save(tmp, self.rank, self.world, {
                "step": self.step, "world_size": self.world, "final": self.step == cfg.train.max_steps,
                "metrics": metrics, "method": cfg.train.method, "strategy": cfg.train.strategy,
                "base_model": self.source, "config": mask_secrets(self.config["cfg"], TrainConfig), **extra})
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)),
                             checkpoint_dir_name=f"step_{self.step:07d}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def print_memory_stop(self, st: dict) -> None:
        if self.rank == 0:
            print(stop_message(st["rank"], st["rss_mb"] * 2**20, st["budget_gb"], st["stop_fraction"],
                               self.step, f"step_{self.step:07d}"), flush=True)

    def finish(self) -> None:
        """The last checkpoint save (ZeRO gathers) came after the last report: record the true
        peak; remove NVMe offload scratch."""
        self.watchdog.stop()
        end_peaks = self.gather(peak_rss_mb())
        if self.rank == 0:
            mem_path = self.run_dir / "memory.json"
            atomic_write_json(mem_path, dict(json.loads(mem_path.read_text()), peak_rss_end_mb=end_peaks))
        self._cleanup_swap()

    # ---- helpers -------------------------------------------------------------------------
    def val_loss(self) -> float | None:
        """Mean token loss over every worker's validation rows (None without any)."""
        if not self.data.val and self.world == 1:
            return None
        bs, n = self.cfg.train.batch_size, None
        if self.engine.lockstep_eval:
            n = int(max(self.gather(-(-len(self.data.val) // bs))))
        s, c = _evaluate(self.engine.eval_model, self.data.val, bs, self.tok.pad_token_id, self.device, n,
                         self.cfg.train.loss_chunk)
        s, c = self.all_sum([s, c])
        return s / c if c else None

    def _truncate_metrics(self, upto: int) -> None:
        """Drop metrics logged after step ``upto`` (they are re-run); guard events stay."""
        kept = [r for r in read_jsonl(self.metrics_path) if r.get("step", 0) <= upto or "event" in r]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def _cleanup_swap(self) -> None:
        """NVMe offload swap files are scratch (restored from the checkpoint on resume): remove them."""
        ds = self.config.get("deepspeed") or {}
        paths = {v.get("nvme_path") for k, v in ds.get("zero_optimization", {}).items()
                 if k.startswith("offload_") and isinstance(v, dict) and v.get("nvme_path")}
        if not paths:
            return
        self.barrier()
        if self.rank == 0:
            for p in paths:
                shutil.rmtree(Path(p) / "zero_stage_3", ignore_errors=True)


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB."""
    return peak_rss_bytes() / 2**20


def _pull_shard(name: str) -> list[Row]:
    import ray.data
    import ray.train

    try:
        shard = ray.train.get_dataset_shard(name)
    except KeyError:  # Ray Train v2: a dataset the trainer was not given (data.val_fraction=0: no "val")
        shard = None
    ray.data.DataContext.get_current().enable_progress_bars = False  # one bar: the driver's
    if shard is None:
        return []
    rows = []
    for batch in shard.iter_batches(batch_size=1024, batch_format="numpy"):
        for idx, ids, lab, tr in zip(batch["row_idx"], batch["input_ids"], batch["labels"], batch["truncated"]):
            rows.append((np.asarray(ids), np.asarray(lab), int(idx), bool(tr)))
    rows.sort(key=lambda r: r[2])
    return rows


def _evaluate(model, rows, bs: int, pad_id: int, device, n_batches: int | None = None,
              loss_chunk: int = 0) -> tuple[float, float]:
    """(sum of token losses, token count) over this worker's rows.

    ``n_batches`` > this worker's own count pads with loss-free dummy batches: under ZeRO-3
    every forward gathers parameters collectively, so all workers must run as many.
    ``loss_chunk`` (train.loss_chunk): the same sums from chunked_loss.labelled_ce, so
    validation never builds the batch x seq x vocab logits either."""
    from .chunked_loss import labelled_ce

    model.eval()
    tot, cnt = 0.0, 0.0
    own = -(-len(rows) // bs)
    dummy = [(np.array([pad_id, pad_id]), np.array([-100, -100]))]
    with torch.no_grad():
        for j in range(max(own, n_batches or 0)):
            ex = [(r[0], r[1]) for r in rows[j * bs:(j + 1) * bs]] or dummy
            b = {k: v.to(device) for k, v in collate(ex, pad_id).items()}
            if loss_chunk:
                s, c = labelled_ce(model, b["input_ids"], b["labels"], loss_chunk, b["attention_mask"])
                tot, cnt = tot + s.item(), cnt + c.item()
                continue
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
            lab = b["labels"][:, 1:]
            lp = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),
                                                   lab.reshape(-1), ignore_index=-100, reduction="sum")
            tot += lp.item()
            cnt += (lab != -100).sum().item()
    model.train()
    return tot, cnt
