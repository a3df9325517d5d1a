"""train/build.py, pure (no Ray): the learning-rate schedule (transformers'), the guard's lr
scaling through the scheduler's public state, and the derived seeds."""
from __future__ import annotations

import math

import pytest
import torch

from rayft.config import load
from rayft.train.build import derived_seed, epoch_order_seed, make_optimizer, set_lr_scale, worker_torch_seed
from rayft.train.config import TrainConfig


def _cfg(*overrides: str) -> TrainConfig:
    return load(TrainConfig, None, ["data.path=x.jsonl", *overrides])


def _old_lambda(warmup: int, total: int, min_ratio: float):
    """The hand-written schedule build.lr_schedule replaced (kept here as the reference)."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def _lrs(cfg: TrainConfig) -> list[float]:
    """The lr each optimizer step 1..max_steps runs at."""
    opt, sched = make_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
    out = []
    for _ in range(cfg.train.max_steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedule_is_warmup_then_cosine_to_min_lr():
    cfg = _cfg("train.lr=0.001", "train.warmup_steps=3", "train.max_steps=30", "train.min_lr_ratio=0.1")
    lrs = _lrs(cfg)
    assert lrs[:4] == pytest.approx([0.0, 1e-3 / 3, 2e-3 / 3, 1e-3])  # transformers' warmup starts at 0
    assert lrs[3:] == sorted(lrs[3:], reverse=True)
    # from the end of warmup on, the same values as the old hand-written schedule
    old = _old_lambda(3, 30, 0.1)
    assert lrs[3:] == pytest.approx([1e-3 * old(s) for s in range(3, 30)], rel=1e-12)
    no_warmup = _cfg("train.lr=0.001", "train.warmup_steps=0", "train.max_steps=20")
    old = _old_lambda(0, 20, 0.1)
    assert _lrs(no_warmup) == pytest.approx([1e-3 * old(s) for s in range(20)], rel=1e-12)


def test_set_lr_scale_applies_now_and_later_and_survives_state_dict():
    cfg = _cfg("train.lr=0.01", "train.warmup_steps=2", "train.max_steps=10")
    opt, sched = make_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
    for _ in range(4):
        opt.step()
        sched.step()
    full = opt.param_groups[0]["lr"]
    set_lr_scale(sched, 0.01, 0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(full * 0.5)  # the very next update
    opt.step()
    sched.step()
    ref_opt, ref = make_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
    for _ in range(5):
        ref_opt.step()
        ref.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"] * 0.5)
    # a checkpoint's scheduler state carries the scale (base_lrs) to a resumed run
    opt2, sched2 = make_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
    sched2.load_state_dict(sched.state_dict())
    assert sched2.base_lrs == [0.005] and sched2.last_epoch == 5


def test_derived_seeds_are_stable_and_distinct():
    assert worker_torch_seed(0, 1) == worker_torch_seed(0, 1)
    seeds = {worker_torch_seed(s, r, st) for s in (0, 1) for r in range(4) for st in (0, 5)}
    seeds |= {epoch_order_seed(s, e) for s in (0, 1) for e in range(4)}
    assert len(seeds) == 2 * 4 * 2 + 2 * 4  # no collisions between streams, ranks, steps, epochs
    assert all(0 <= x < 2**32 for x in seeds)
    assert derived_seed(-3, 1) == derived_seed(-3, 1)  # negative run.seed is accepted
