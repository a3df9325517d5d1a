"""Checks run on the driver before any worker starts: can the device run the strategy, is the
DeepSpeed JSON valid, will the job fit the memory budget. No Ray here.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError
from . import deepspeed as dsc
from .config import TrainConfig
from .memory import GB, Estimate, ModelShape, check_fits, nvme_param_buffer, stop_line_bytes


@dataclass
class Preflight:
    dtype: str
    ds_config: dict | None
    shape: ModelShape | None
    estimate: Estimate | None
    note: str = ""

    def report(self) -> dict:
        return {"dtype": self.dtype, "estimate_gb": self.estimate.total / GB if self.estimate else None,
                "estimate_parts_gb": {k: v / GB for k, v in self.estimate.parts.items()} if self.estimate else None,
                "model_params": self.shape.n_params if self.shape else None,
                "trainable_params": (self.shape.lora_params if self.shape else None), "note": self.note}


def check_device(cfg: TrainConfig, dtype: str) -> None:
    """Refuse strategy/dtype/offload combinations the workers' device cannot run."""
    t, gpu = cfg.train, cfg.scaling.use_gpu
    if t.strategy == "ddp":
        if dtype == "float16" and not gpu:
            raise ConfigError("model.dtype=float16 on CPU workers: CPU kernels have no fp16 training "
                              "path; use float32 (or bfloat16 with scaling.use_gpu=true)")
        return
    if dtype == "float16" and not gpu:
        raise ConfigError(f"train.strategy={t.strategy} with model.dtype=float16 on CPU workers: DeepSpeed's "
                          "CPU accelerator has no fp16 support; use model.dtype=float32")
    if t.offload_optimizer == "nvme" and t.strategy != "zero3":
        raise ConfigError("train.offload_optimizer=nvme needs train.strategy=zero3 (ZeRO-2 offloads the "
                          "optimizer to cpu only)")
    if "nvme" in (t.offload_optimizer, t.offload_params):
        from deepspeed.ops.op_builder import AsyncIOBuilder

        if not AsyncIOBuilder().is_compatible(verbose=False):
            raise ConfigError("nvme offload needs DeepSpeed's async_io op, which needs libaio: install "
                              "libaio-dev (apt-get install libaio-dev) on every worker node, or use "
                              "train.offload_*=none/cpu")


def deepspeed_for(cfg: TrainConfig, run_dir: Path, dtype: str, shape: ModelShape | None) -> dict | None:
    """The final DeepSpeed dict the workers get (None for ddp)."""
    if cfg.train.strategy == "ddp":
        return None
    user = dsc.read_user_json(cfg.train.deepspeed_config) if cfg.train.deepspeed_config else None
    ds = dsc.final_config(cfg, cfg.scaling.num_workers, dtype, dsc.nvme_dir(cfg, run_dir), user)
    op = ds["zero_optimization"].get("offload_param")
    if op and op.get("device") == "nvme" and shape is not None and "buffer_size" not in (
            (user or {}).get("zero_optimization", {}).get("offload_param", {})):
        # each nvme buffer must hold the largest parameter partition; no bigger (they are preallocated)
        op["buffer_size"] = nvme_param_buffer(shape, cfg.scaling.num_workers, cfg.train.vocab_chunks)
    return ds


def preflight(cfg: TrainConfig, source: str, run_dir: Path, quiet: bool = False) -> Preflight:
    """All pre-launch checks; prints the memory estimate. Raises ConfigError / MemoryBudgetError."""
    dtype = dsc.resolve_dtype(cfg)
    check_device(cfg, dtype)
    shape, note = None, ""
    try:
        from .shape import model_shape
        shape = model_shape(cfg, source)
    except Exception as e:  # a hub id without network/cache: the estimate is skipped, not the run
        note = f"estimate unavailable: cannot read the model config of {source}: {e}"
    ds = deepspeed_for(cfg, run_dir, dtype, shape)
    if ds is not None:
        dsc.validate_with_deepspeed(ds)
    est = check_fits(cfg, shape, dtype) if shape is not None else None
    if not quiet:
        m = cfg.memory
        line = f"[rayft] memory estimate ({cfg.train.method}, {cfg.train.strategy}"
        if cfg.train.offload_optimizer != "none" or cfg.train.offload_params != "none":
            line += f", offload optimizer={cfg.train.offload_optimizer} params={cfg.train.offload_params}"
        line += f", {cfg.scaling.num_workers} worker(s), {dtype}): "
        line += est.line() if est else note
        if m.budget_gb > 0:
            line += f" | budget {m.budget_gb:g} GB, watchdog stops at {stop_line_bytes(cfg) / GB:.2f} GB"
        if cfg.train.offload_optimizer == "cpu" and not cfg.scaling.use_gpu:
            line += " | note: cpu offload on CPU workers keeps the states in the same process"
        print(line, file=sys.stderr)
    return Preflight(dtype, ds, shape, est, note)
