"""How one optimizer step is taken: the ``Engine`` contract, plain DDP here, DeepSpeed ZeRO
in zero.py. Model, optimizer and schedule are built by build.py (shared by both engines).
Engines never call ray.train.*: the worker loop (loop.py) hands them Ray Train's
``prepare_model`` through ``wrap``.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Protocol

import torch

from . import checkpoint as ckpt_io
from .build import build_model, make_optimizer
from .config import TrainConfig


class Engine(Protocol):
    """What the worker loop needs from an engine (DDPEngine, zero.ZeroEngine)."""

    model: torch.nn.Module
    """the module to train; ``model.train()`` is called after a rollback"""
    eval_model: torch.nn.Module
    """the module validation runs forward on (never a DDP wrapper: its forward is a collective)"""
    lockstep_eval: bool
    """True when every forward is a collective (ZeRO-3), so validation must run the same number
    of batches on every worker"""
    sched: torch.optim.lr_scheduler.LambdaLR
    """the learning-rate schedule (build.lr_schedule); the guard rescales it (build.set_lr_scale)"""

    def wrap(self, prepare_model) -> None:
        """Hand the model to Ray Train (device placement + DDP) after any restore, or nothing."""

    def micro_step(self, batch: dict, index: int, accum: int) -> float:
        """Forward + backward of micro-batch ``index`` of ``accum``; returns its loss."""

    def step(self) -> None:
        """After the last micro-batch of an optimizer step: update the weights, step the schedule."""

    def lr(self) -> float:
        """The learning rate the next update uses."""

    def save(self, directory: Path, rank: int, world: int, state: dict) -> None:
        """Write a checkpoint directory (collective: every rank calls it at the same step)."""

    def restore(self, directory: Path, rank: int, world: int) -> dict:
        """Load a checkpoint directory written by ``save``; returns its state.json."""


class DDPEngine:
    """Every worker holds the whole model; gradients all-reduced by torch DDP."""

    lockstep_eval = False

    def __init__(self, cfg: TrainConfig, source: str, tok, world: int):
        self.cfg, self.tok, self.world = cfg, tok, world
        # eval_model is the unwrapped module: DDP's forward syncs buffers (a collective), which
        # would deadlock when one worker has fewer val rows than another.
        self.model = self.unwrapped = self.eval_model = build_model(cfg, source, tok)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt, self.sched = make_optimizer(cfg, self.params)

    def restore(self, directory: Path, rank: int, world: int) -> dict:
        ckpt_io.load_trainable_weights(self.unwrapped, directory, self.cfg.train.method)
        return ckpt_io.load_training_state(directory, self.opt, self.sched)

    def wrap(self, prepare_model) -> None:
        """Hand the model to Ray Train (device placement + DDP) after any restore. With
        train.loss_chunk the module DDP wraps computes the chunked loss (chunked_loss.py)."""
        chunk = self.cfg.train.loss_chunk
        if chunk:
            from .chunked_loss import ChunkedLossLM
            self.model = prepare_model(ChunkedLossLM(self.model, chunk))
            inner = self.model.module if hasattr(self.model, "module") else self.model
            self.unwrapped = self.eval_model = inner.lm
            return
        self.model = prepare_model(self.model)
        self.unwrapped = self.eval_model = self.model.module if hasattr(self.model, "module") else self.model

    def micro_step(self, batch: dict, index: int, accum: int) -> float:
        sync = index == accum - 1 or self.world == 1
        ctx = self.model.no_sync() if (not sync and hasattr(self.model, "no_sync")) else nullcontext()
        with ctx:
            out = self.model(**batch)
            (out.loss / accum).backward()
        return out.loss.item()

    def step(self) -> None:
        if self.cfg.train.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.train.max_grad_norm)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)

    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def save(self, directory: Path, rank: int, world: int, state: dict) -> None:
        if rank == 0:
            ckpt_io.save_model(self.unwrapped, self.tok, directory, self.cfg.train.method)
            ckpt_io.save_training_state(directory, self.opt, self.sched, state)


def make_engine(cfg: TrainConfig, source: str, tok, world: int, ds_config: dict | None) -> Engine:
    """DDPEngine for train.strategy=ddp, ZeroEngine (DeepSpeed) for zero2/zero3."""
    if cfg.train.strategy == "ddp":
        return DDPEngine(cfg, source, tok, world)
    from .zero import ZeroEngine
    return ZeroEngine(cfg, source, tok, world, ds_config)
