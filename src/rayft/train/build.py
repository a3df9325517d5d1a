"""What a training run is built from: model (+ LoRA), optimizer, learning-rate schedule, seeds.

Shared by both engines (engine.DDPEngine, zero.ZeroEngine) and by the benchmarks, so neither
engine module imports the other. No Ray here.

The schedule is transformers' ``get_cosine_with_min_lr_schedule_with_warmup`` (the one HF
Trainer uses for ``lr_scheduler_type="cosine_with_min_lr"``): linear warmup from 0 over
``train.warmup_steps``, then cosine down to ``train.lr * train.min_lr_ratio`` at
``train.max_steps``. The scheduler is stepped after every optimizer step, so optimizer step k
(1-based) runs at ``lr * schedule(k - 1)``.
"""
from __future__ import annotations

import numpy as np
import torch

from .config import TrainConfig

# ---- seeds ----------------------------------------------------------------------------------
#: independent random streams derived from run.seed (see derived_seed)
SEED_TORCH, SEED_DATA_ORDER = 1, 2


def derived_seed(seed: int, stream: int, *key: int) -> int:
    """A 32-bit seed for one random stream of a run, from numpy's SeedSequence over
    ``(run.seed, stream, *key)``: different streams or keys give statistically independent
    seeds (no arithmetic like ``seed * 1000 + rank`` whose values can collide)."""
    words = [int(seed) % 2**64, int(stream), *(int(k) % 2**64 for k in key)]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def worker_torch_seed(seed: int, rank: int, step: int = 0) -> int:
    """torch's global RNG (dropout) of worker ``rank``, starting (or restarting without a
    saved RNG state, e.g. on a different worker count) at optimizer step ``step``."""
    return derived_seed(seed, SEED_TORCH, rank, step)


def epoch_order_seed(seed: int, epoch: int) -> int:
    """The permutation of a worker's shard in ``epoch`` (the same on every worker)."""
    return derived_seed(seed, SEED_DATA_ORDER, epoch)


# ---- model ----------------------------------------------------------------------------------
def base_model(cfg: TrainConfig, source: str, tok):
    """The base causal LM: pretrained weights, a tiny preset, or (model.init=random) the
    architecture of ``source`` with seeded random weights."""
    from ..models.load import is_tiny, load_model, torch_dtype

    # a compact base is loaded in bf16 (no fp32 copy ever exists); lowbit.py quantizes / upcasts the rest
    dtype = "bfloat16" if cfg.model.quantize != "none" else cfg.model.dtype
    if cfg.model.init == "random" and not is_tiny(source):
        from transformers import AutoModelForCausalLM

        from .shape import hf_config
        if cfg.model.quantize in ("int8", "nf4"):  # quantized layer by layer (never whole in bf16)
            from .lowbit import random_quantized
            return random_quantized(hf_config(source, cfg.model.trust_remote_code), cfg.model.quantize,
                                    torch_dtype(cfg.model.dtype), cfg.run.seed)
        torch.manual_seed(cfg.run.seed)
        return AutoModelForCausalLM.from_config(hf_config(source, cfg.model.trust_remote_code),
                                                dtype=torch_dtype(dtype))
    if cfg.model.quantize in ("int8", "nf4") and not is_tiny(source):
        # pretrained: transformers + bitsandbytes quantize each linear as its weight is read
        from .lowbit import load_quantized
        return load_quantized(source, cfg.model.quantize, torch_dtype(cfg.model.dtype), cfg.model.trust_remote_code)
    return load_model(source, tok, dtype, cfg.model.trust_remote_code, cfg.run.seed)


def build_model(cfg: TrainConfig, source: str, tok):
    """Base model (+ gradient checkpointing) (+ LoRA adapter, identically seeded on every worker)."""
    model = base_model(cfg, source, tok)
    if cfg.model.quantize != "none":  # a compact frozen base for LoRA (lowbit.py: bitsandbytes / bf16)
        from ..models.load import torch_dtype
        from .lowbit import store_base_compact
        store_base_compact(model, cfg.model.quantize, torch_dtype(cfg.model.dtype))
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
        if cfg.model.adapter:  # continue from an earlier adapter (rayft watch: the champion's)
            from pathlib import Path

            from .checkpoint import load_trainable_weights
            load_trainable_weights(model, Path(cfg.model.adapter).parent, "lora")
        if cfg.model.quantize != "none":
            from .lowbit import quantized_param_names
            # frozen and identical on every worker: DDP neither broadcasts nor buckets them
            model._ddp_params_and_buffers_to_ignore = quantized_param_names(model)
    return model


# ---- optimizer and schedule -----------------------------------------------------------------
def lr_schedule(cfg: TrainConfig, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' cosine-with-min-lr schedule with linear warmup (see the module docstring)."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    return get_cosine_with_min_lr_schedule_with_warmup(
        opt, num_warmup_steps=cfg.train.warmup_steps, num_training_steps=cfg.train.max_steps,
        min_lr_rate=cfg.train.min_lr_ratio)


def make_optimizer(cfg: TrainConfig, params):
    """torch AdamW and its ``lr_schedule``."""
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    return opt, lr_schedule(cfg, opt)


def set_lr_scale(sched: torch.optim.lr_scheduler.LambdaLR, base_lr: float, scale: float) -> None:
    """From now on the schedule peaks at ``base_lr * scale`` (the guard's rollbacks).

    Through the scheduler's public state only: ``base_lrs`` (what every later ``step()``
    multiplies the schedule by; saved and restored with ``state_dict``) and the optimizer's
    param groups, set at once to the scaled value of the current step so the very next
    update already uses it. The engines read the current lr from the param groups.
    """
    sched.base_lrs = [base_lr * scale for _ in sched.base_lrs]
    for g, b, f in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
        g["lr"] = b * f(sched.last_epoch)
