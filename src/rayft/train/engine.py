"""How one optimizer step is taken: plain DDP here, DeepSpeed ZeRO in zero.py.

Both engines expose the same small surface to the loop (loop.py stays the only caller of
ray.train.*): ``micro_step`` (forward + backward of one micro-batch), ``step`` (after the
last micro-batch of an optimizer step), ``lr``, ``save``/``restore`` of a checkpoint
directory, ``eval_model`` and ``lockstep_eval`` (True when every forward is a collective,
so evaluation must run the same number of batches on every worker).
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import checkpoint as ckpt_io
from .config import TrainConfig


def lr_lambda(warmup: int, total: int, min_ratio: float):
    import math

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def base_model(cfg: TrainConfig, source: str, tok):
    """The base causal LM: pretrained weights, a tiny preset, or (model.init=random) the
    architecture of ``source`` with seeded random weights."""
    from ..models.load import is_tiny, load_model, torch_dtype

    if cfg.model.init == "random" and not is_tiny(source):
        from transformers import AutoModelForCausalLM

        from .shape import hf_config
        torch.manual_seed(cfg.run.seed)
        return AutoModelForCausalLM.from_config(hf_config(source, cfg.model.trust_remote_code),
                                                dtype=torch_dtype(cfg.model.dtype))
    return load_model(source, tok, cfg.model.dtype, cfg.model.trust_remote_code, cfg.run.seed)


def build_model(cfg: TrainConfig, source: str, tok):
    """Base model (+ gradient checkpointing) (+ LoRA adapter, identically seeded on every worker)."""
    model = base_model(cfg, source, tok)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.train.method == "full" and cfg.train.freeze_embeddings:
        for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
            if emb is not None:
                emb.weight.requires_grad_(False)  # tied: one parameter, frozen once
    if cfg.train.method == "lora":
        from peft import LoraConfig, get_peft_model

        tm = cfg.lora.target_modules
        lcfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules="all-linear" if tm == ["all-linear"] else tm, task_type="CAUSAL_LM")
        torch.manual_seed(cfg.run.seed + 1)  # same adapter init on every worker
        model = get_peft_model(model, lcfg)
    return model


def make_optimizer(cfg: TrainConfig, params):
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(cfg.train.warmup_steps, cfg.train.max_steps, cfg.train.min_lr_ratio))
    return opt, sched


def set_lr_scale(sched, base_lr: float, scale: float) -> None:
    """From now on the schedule peaks at ``base_lr * scale`` (guard rollbacks); the optimizer's
    current learning rate follows at once, not only at the next scheduler step."""
    sched.base_lrs = [base_lr * scale for _ in sched.base_lrs]
    lrs = [b * f(sched.last_epoch) for b, f in zip(sched.base_lrs, sched.lr_lambdas)]
    for g, lr in zip(sched.optimizer.param_groups, lrs):
        g["lr"] = lr
    sched._last_lr = lrs


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


class DDPEngine:
    """Every worker holds the whole model; gradients all-reduced by torch DDP."""

    lockstep_eval = False

    def __init__(self, cfg: TrainConfig, source: str, tok, world: int):
        self.cfg, self.tok, self.world = cfg, tok, world
        self.model = self.inner = build_model(cfg, source, tok)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt, self.sched = make_optimizer(cfg, self.params)

    def restore(self, directory: Path, rank: int, world: int) -> dict:
        ckpt_io.load_trainable_weights(self.inner, directory, self.cfg.train.method)
        return ckpt_io.load_training_state(directory, self.opt, self.sched)

    def wrap(self, prepare_model) -> None:
        """Hand the model to Ray Train (device placement + DDP) after any restore."""
        self.model = prepare_model(self.model)
        self.inner = self.model.module if hasattr(self.model, "module") else self.model

    @property
    def eval_model(self):
        # The unwrapped module: DDP's forward syncs buffers (a collective), which would
        # deadlock when one worker has fewer val rows than another.
        return self.inner

    def micro_step(self, batch: dict, index: int, accum: int) -> float:
        sync = index == accum - 1 or self.world == 1
        ctx = self.model.no_sync() if (not sync and hasattr(self.model, "no_sync")) else _null()
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
        return self.sched.get_last_lr()[0]

    def save(self, directory: Path, rank: int, world: int, state: dict) -> None:
        if rank == 0:
            ckpt_io.save_model(self.inner, self.tok, directory, self.cfg.train.method)
            ckpt_io.save_training_state(directory, self.opt, self.sched, state)


def make_engine(cfg: TrainConfig, source: str, tok, world: int, ds_config: dict | None):
    """DDPEngine for train.strategy=ddp, ZeroEngine (DeepSpeed) for zero2/zero3."""
    if cfg.train.strategy == "ddp":
        return DDPEngine(cfg, source, tok, world)
    from .zero import ZeroEngine
    return ZeroEngine(cfg, source, tok, world, ds_config)
