"""TrainConfig -> DeepSpeed config dict (pure), plus the user-JSON override and its checks.

``ds_config`` is a pure function of the config, the worker count and the resolved
dtype, so it is snapshot-tested and the driver prints exactly what the workers will
use. Bucket sizes are chosen for CPU workers with a few GB each: DeepSpeed's defaults
(5e8-element buckets, 1e9 live parameters) are sized for 80 GB GPUs and by themselves
cost several GB per worker on CPU.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..config import ConfigError, deep_merge
from .config import TrainConfig

#: CPU workers' ZeRO-3 optimizer step (and nvme swap) granularity, in elements (memory.estimate counts it)
CPU_SUB_GROUP_SIZE = int(2e7)
#: nvme parameter swap buffers (why 8: see ds_config; memory.estimate counts them)
NVME_PARAM_BUFFER_COUNT = 8

#: Every top-level key DeepSpeed 0.19.8's DeepSpeedConfig reads (recorded from the installed
#: version; tests/test_deepspeed_config.py re-records it so an upgrade that changes it fails).
KNOWN_TOP_LEVEL = frozenset("""
activation_checkpointing aio amp autotuning bf16 bfloat16 checkpoint comet comms_logger
communication_data_type compile compression_training csv_monitor curriculum_learning data_efficiency
data_types dataloader_drop_last datastates_ckpt disable_allgather disable_python_gc dump_state eigenvalue
elasticity expert_parallel flops_profiler fp16 gradient_accumulation_steps gradient_allreduce_op
gradient_clipping gradient_predivide_factor graph_harvesting hybrid_engine log_level
managed_gradient_accumulation memory_breakdown nebula optimizer pipeline prescale_gradients
progressive_layer_drop quantize_training scheduler seq_parallel_communication_data_type sparse_attention
sparse_gradients steps_per_print tensor_parallel tensorboard timers torch_autocast train_batch_size
train_micro_batch_size_per_gpu use_data_before_expert_parallelism vocabulary_size wall_clock_breakdown
wandb weight_quantization zero_allow_untested_optimizer zero_force_ds_cpu_optimizer zero_optimization
""".split())

#: Keys rayft owns: the loop drives batching, the optimizer and the schedule itself, so a
#: user value here would silently disagree with train.* (the reason is given on refusal).
OWNED = {
    "train_batch_size": "set train.batch_size / train.grad_accum / scaling.num_workers instead",
    "train_micro_batch_size_per_gpu": "set train.batch_size instead",
    "gradient_accumulation_steps": "set train.grad_accum instead",
    "gradient_clipping": "set train.max_grad_norm instead",
    "optimizer": "rayft builds AdamW from train.lr / train.weight_decay",
    "scheduler": "rayft builds warmup + cosine from train.warmup_steps / train.min_lr_ratio",
}

STAGE = {"zero2": 2, "zero3": 3}


def resolve_dtype(cfg: TrainConfig) -> str:
    """``model.dtype`` with ``auto`` resolved the way the worker will resolve it.

    CPU workers: float32 (no native bf16 on the CPUs we run on; bf16 matmul is ~150x slower).
    GPU workers: bfloat16 (assumes a bf16-capable GPU; set model.dtype explicitly otherwise).
    """
    if cfg.model.dtype != "auto":
        return cfg.model.dtype
    return "bfloat16" if cfg.scaling.use_gpu else "float32"


def nvme_dir(cfg: TrainConfig, run_dir: str | Path) -> str:
    """Where nvme offload swaps: train.nvme_path or <run dir>/nvme_swap."""
    return cfg.train.nvme_path or str(Path(run_dir) / "nvme_swap")


def ds_config(cfg: TrainConfig, world_size: int, dtype: str, nvme_path: str = "nvme_swap") -> dict:
    """The DeepSpeed config for ``train.strategy`` zero2/zero3 (pure; no user JSON merged)."""
    if cfg.train.strategy not in STAGE:
        raise ValueError(f"ds_config: train.strategy={cfg.train.strategy} is not a DeepSpeed strategy")
    t = cfg.train
    stage = STAGE[t.strategy]
    gpu = cfg.scaling.use_gpu
    # CPU workers: small buckets (each bucket is a full-size buffer in the worker's RSS);
    # GPUs: DeepSpeed-ish defaults that keep the interconnect busy.
    bucket = int(5e7) if gpu else int(5e6)
    zero: dict = {
        "stage": stage,
        "overlap_comm": gpu,  # overlap needs streams; on CPU it only adds buffers
        "contiguous_gradients": True,
        "reduce_scatter": True,
        "reduce_bucket_size": bucket,
        "allgather_bucket_size": bucket,
        "round_robin_gradients": False,
    }
    if stage == 3:
        zero.update({
            # CPU: no prefetch. DeepSpeed always prefetches at least the next parameter whatever its
            # size, so the backward pass gathers the tied 152k-vocab embedding of a Qwen-size model
            # early, and the measured peak (LoRA 0.5B, 2 workers) was 0.36 GB higher with prefetch
            # than without; on CPU there is little compute to overlap the gather with anyway.
            "stage3_prefetch_bucket_size": bucket if gpu else 0,
            # parameters smaller than this stay unpartitioned (norms, biases): cheap, fewer gathers
            "stage3_param_persistence_threshold": int(1e5) if gpu else int(1e4),
            "stage3_max_live_parameters": int(1e9) if gpu else int(3e7),
            "stage3_max_reuse_distance": int(1e9) if gpu else int(3e7),
            # optimizer step (and nvme swap) granularity: one sub-group's fp32 states at a time
            "sub_group_size": int(1e9) if gpu else CPU_SUB_GROUP_SIZE,
        })
    if t.offload_optimizer != "none":
        off = {"device": t.offload_optimizer, "pin_memory": gpu}
        if t.offload_optimizer == "nvme":
            off.update({"nvme_path": nvme_path, "buffer_count": 4, "fast_init": False})
        zero["offload_optimizer"] = off
    if t.offload_params != "none":
        off = {"device": t.offload_params, "pin_memory": gpu}
        if t.offload_params == "nvme":
            # buffer_size must hold the largest parameter partition; launch fills it in from the
            # model shape (see memory.nvme_param_buffer) - this default fits models up to ~1e8.
            # buffer_count: every partitioned matrix of the layer being recomputed (gradient
            # checkpointing) is swapped in at once - a Qwen2/Llama layer has 7; with 4 the LoRA
            # 0.5B backward failed ("Not enough swap in buffers"). All buffers are the size of the
            # largest partition (the embedding), which is what makes this offload expensive.
            off.update({"nvme_path": nvme_path, "buffer_count": NVME_PARAM_BUFFER_COUNT, "buffer_size": int(1e8),
                        "max_in_cpu": 0})
        zero["offload_param"] = off
    out = {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": t.batch_size * t.grad_accum * world_size,
        "gradient_clipping": float(t.max_grad_norm),
        "steps_per_print": 10**9,  # rayft reports metrics itself
        "wall_clock_breakdown": False,
        # rayft passes torch AdamW (no cpu_adam compile); DeepSpeed would insist on its own
        # DeepSpeedCPUAdam under offload otherwise.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "zero_optimization": zero,
    }
    if dtype == "bfloat16":
        out["bf16"] = {"enabled": True}
    elif dtype == "float16":
        out["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    if t.offload_optimizer == "nvme" or t.offload_params == "nvme":
        # one in-flight request per block; thread_count 1 keeps the 2-core CPU workers free
        out["aio"] = {"block_size": 1048576, "queue_depth": 8, "thread_count": 1,
                      "single_submit": False, "overlap_events": True}
    return out


def read_user_json(path: str) -> dict:
    """The user's DeepSpeed JSON, checked: a mapping whose keys DeepSpeed knows and rayft does not own."""
    p = Path(os.path.expanduser(path))
    if not p.is_file():
        raise ConfigError(f"train.deepspeed_config: file not found: {p}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"train.deepspeed_config: {p} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"train.deepspeed_config: {p} must hold a JSON object")
    check_user_keys(data, str(p))
    return data


def check_user_keys(data: dict, where: str = "train.deepspeed_config") -> None:
    """Refuse keys DeepSpeed would silently ignore (typos) and keys rayft sets itself."""
    unknown = sorted(k for k in data if k not in KNOWN_TOP_LEVEL)
    if unknown:
        raise ConfigError(f"{where}: unknown DeepSpeed key(s) {unknown}; DeepSpeed ignores unknown keys "
                          "silently, so rayft refuses them (check the spelling against "
                          "https://www.deepspeed.ai/docs/config-json/)")
    owned = sorted(k for k in data if k in OWNED)
    if owned:
        raise ConfigError(f"{where}: key {owned[0]!r} is set by rayft: {OWNED[owned[0]]}")


def final_config(cfg: TrainConfig, world_size: int, dtype: str, nvme_path: str,
                 user: dict | None = None) -> dict:
    """Generated config with the user's JSON merged over it (user wins, section by section)."""
    base = ds_config(cfg, world_size, dtype, nvme_path)
    return deep_merge(base, user) if user else base


def validate_with_deepspeed(ds: dict) -> None:
    """Parse the final dict with DeepSpeed's own config classes (its nested sections are
    pydantic models that forbid unknown keys). Imports deepspeed: driver-side, pre-launch."""
    try:
        from deepspeed.runtime.config import DeepSpeedConfig
    except ImportError as e:  # pragma: no cover - deepspeed is a dependency
        raise ConfigError(f"train.strategy needs deepspeed: {e}") from None
    probe = dict(ds, train_batch_size=ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"])
    try:
        DeepSpeedConfig(probe)
    except Exception as e:  # pydantic ValidationError, AssertionError, ValueError
        msg = str(e).strip().splitlines()
        raise ConfigError("DeepSpeed refused the config: " + " | ".join(m.strip() for m in msg[:4])) from None
