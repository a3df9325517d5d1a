"""Pre-launch estimate of each worker's peak memory, and the refusal when it will not fit.

Pure: ``estimate(cfg, shape)`` is arithmetic over a ``ModelShape`` (parameter counts read
from the model's config on the meta device, never its weights). Every term is per worker,
in bytes, and named so the printed line shows where the memory goes:

* runtime     torch (CUDA build) + transformers + Ray Train (+ DeepSpeed) before any model
* weights     the model in its dtype: whole (ddp, zero2), 1/W (zero3), or only buffers (nvme)
* gathered    zero3: parameters all-gathered for the layer being computed (the largest one,
              usually the tied embedding, and its full-size gradient in a full fine-tune)
* master      zero2/zero3: DeepSpeed's fp32 copy of the trainable partition (a clone even
              when the model is already fp32)
* grads       trainable gradients: whole plus DDP's bucket copy (ddp), or a 1/W partition plus
              the largest full-size gradient before it is reduce-scattered (zero)
* optimizer   AdamW exp_avg + exp_avg_sq (8 bytes per trainable parameter, / W under ZeRO)
* activations saved-for-backward tensors per token per layer (all layers, or only the layer
              inputs plus one layer with gradient checkpointing), attention and the logits
              (batch x seq x vocab fp32, held ~3x: logits, log-softmax, its gradient)

The constants were fitted to measured peaks on this install (benchmarks/memory_envelope.py,
RESULTS.md "Memory envelope"); ``memory.runtime_gb`` overrides the runtime term elsewhere.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from ..config import ConfigError
from .config import TrainConfig

GB = 2**30
#: measured RSS of a Ray Train worker after importing torch (CUDA build), transformers, peft
#: and ray.train, before building a model (benchmarks/out/memory_envelope: rss_runtime_mb)
RUNTIME_GB = 1.10
#: extra when the worker imports and initialises DeepSpeed (its comm layer, op registry)
DEEPSPEED_RUNTIME_GB = 0.15
#: saved-for-backward floats per token per decoder layer: A_H * hidden + A_I * intermediate
A_H, A_I = 16.0, 5.0
#: LoRA saves less (frozen linears keep their weight, not their input) plus dropout copies
LORA_ACT_FACTOR = 0.8
#: copies of the batch x seq x vocab fp32 logits alive at the loss (logits, log-softmax, grad)
LOGIT_COPIES = 3.0


class MemoryBudgetError(ConfigError):
    """A job that does not fit its memory budget (refused before launch, or stopped by the
    watchdog); the message names the numbers and what would fit."""


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a model; no weights involved."""
    n_params: int
    largest_param: int
    layer_params: int
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    lora_params: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Estimate:
    parts: dict[str, float] = field(default_factory=dict)  # bytes per worker, by term

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def line(self) -> str:
        body = ", ".join(f"{k} {v / GB:.2f}" for k, v in self.parts.items() if v >= 0.005 * GB)
        return f"{self.total / GB:.2f} GB per worker ({body})"


def dtype_bytes(dtype: str) -> int:
    return 2 if dtype in ("bfloat16", "float16") else 4


def estimate(cfg: TrainConfig, shape: ModelShape, dtype: str = "float32") -> Estimate:
    """Peak resident memory of ONE worker for this config and model (pure arithmetic)."""
    t, W = cfg.train, cfg.scaling.num_workers
    B = dtype_bytes(dtype)
    N = shape.n_params
    T = shape.lora_params if t.method == "lora" else N
    zero = t.strategy in ("zero2", "zero3")
    opt_nvme = t.offload_optimizer == "nvme"
    p = {}
    p["runtime"] = (cfg.memory.runtime_gb or RUNTIME_GB + (DEEPSPEED_RUNTIME_GB if zero else 0.0)) * GB

    if t.strategy == "zero3":
        if t.offload_params == "nvme":
            # buffer pool sized for the largest parameter partition (see nvme_param_buffer)
            p["weights"] = 4 * nvme_param_buffer(shape, W) * B
        else:
            p["weights"] = N * B / W
        gathered = shape.largest_param + shape.layer_params
        if t.method == "full":
            gathered += shape.largest_param  # its full-size gradient before reduce-scatter
        p["gathered"] = gathered * B
    else:
        p["weights"] = N * B

    if zero:
        p["master"] = 0.0 if opt_nvme else 4 * T / W
        largest_trainable = shape.largest_param if t.method == "full" else 0
        p["grads"] = 4 * T / W + (largest_trainable * B if t.strategy == "zero2" else 0)
        p["optimizer"] = 8 * T / W if not opt_nvme else 4 * 4 * 2e7 * 2  # swap buffers
    else:
        p["grads"] = T * B * (2 if W > 1 else 1)  # DDP keeps a bucket copy of every gradient
        p["optimizer"] = 8 * T

    tokens = t.batch_size * cfg.data.max_seq_len
    per_layer = (A_H * shape.hidden + A_I * shape.intermediate) * 4 * tokens
    if t.method == "lora":
        per_layer *= LORA_ACT_FACTOR
    if t.gradient_checkpointing:
        act = shape.layers * shape.hidden * 4 * tokens + per_layer
    else:
        act = shape.layers * per_layer
    attn = t.batch_size * shape.heads * cfg.data.max_seq_len ** 2 * 4 * (1 if t.gradient_checkpointing else shape.layers)
    p["activations"] = act + attn + LOGIT_COPIES * tokens * shape.vocab * 4
    return Estimate(p)


def nvme_param_buffer(shape: ModelShape, world: int) -> int:
    """Elements per nvme parameter buffer: must hold the largest parameter's partition."""
    part = -(-shape.largest_param // world)
    return max(int(1e7), part)


def stop_line_bytes(cfg: TrainConfig) -> float:
    """RSS at which the watchdog stops the run (budget x stop_fraction)."""
    return cfg.memory.budget_gb * cfg.memory.stop_fraction * GB


def _variants(cfg: TrainConfig) -> list[tuple[str, TrainConfig]]:
    """Concrete changes a user can make, most preferred first (quality kept where possible)."""
    out = []
    t, s, d = cfg.train, cfg.scaling, cfg.data

    def v(label, **kw):
        new = replace(cfg, **{k: replace(getattr(cfg, k), **val) for k, val in kw.items()})
        out.append((label, new))

    if not t.gradient_checkpointing:
        v("train.gradient_checkpointing=true", train={"gradient_checkpointing": True})
    if t.batch_size > 1:
        v(f"train.batch_size=1 train.grad_accum={t.batch_size * t.grad_accum} (same examples per step)",
          train={"batch_size": 1, "grad_accum": t.batch_size * t.grad_accum})
    for w in (2, 4, 8):
        if w > s.num_workers:
            v(f"train.strategy=zero3 scaling.num_workers={w} (ZeRO-3 splits weights, gradients and "
              f"optimizer states across workers)", train={"strategy": "zero3", "offload_optimizer": t.offload_optimizer,
                                                           "offload_params": t.offload_params},
              scaling={"num_workers": w})
    if t.strategy != "zero3" or t.offload_optimizer != "nvme":
        v("train.strategy=zero3 train.offload_optimizer=nvme (optimizer states on local disk)",
          train={"strategy": "zero3", "offload_optimizer": "nvme"})
    if t.offload_params != "nvme":
        v("train.strategy=zero3 train.offload_optimizer=nvme train.offload_params=nvme (ZeRO-Infinity: "
          "weights on local disk too)", train={"strategy": "zero3", "offload_optimizer": "nvme",
                                               "offload_params": "nvme"})
    if t.method == "full":
        v("train.method=lora (only the adapter is trained)", train={"method": "lora"})
    if d.max_seq_len > 64:
        v(f"data.max_seq_len={d.max_seq_len // 2}", data={"max_seq_len": d.max_seq_len // 2})
    return out


def suggestions(cfg: TrainConfig, shape: ModelShape, dtype: str, limit: float) -> list[str]:
    """Single changes (then a few combined) whose estimate fits under ``limit`` bytes."""
    fits = []
    singles = _variants(cfg)
    for label, new in singles:
        e = estimate(new, shape, dtype)
        if e.total <= limit:
            fits.append(f"{label} -> {e.total / GB:.2f} GB")
    if fits:
        return fits[:4]
    # no single change is enough: stack them in order until it fits
    cur, labels = cfg, []
    for label, _ in singles:
        for lab2, new in _variants(cur):
            if lab2 == label:
                cur, labels = new, labels + [label.split(" (")[0]]
                e = estimate(cur, shape, dtype)
                if e.total <= limit:
                    return [" + ".join(labels) + f" -> {e.total / GB:.2f} GB"]
    return []


def check_fits(cfg: TrainConfig, shape: ModelShape, dtype: str) -> Estimate:
    """Return the estimate; raise MemoryBudgetError (with what would fit) when it exceeds the
    watchdog line and memory.refuse_over_estimate is set."""
    est = estimate(cfg, shape, dtype)
    if cfg.memory.budget_gb <= 0 or not cfg.memory.refuse_over_estimate:
        return est
    limit = stop_line_bytes(cfg)
    if est.total <= limit:
        return est
    sug = suggestions(cfg, shape, dtype, limit)
    hint = ("; would fit: " + "; ".join(sug)) if sug else (
        "; no combination of gradient checkpointing, batch 1, more ZeRO-3 workers, nvme offload, LoRA "
        "and shorter sequences fits - use a smaller model or a larger memory.budget_gb")
    raise MemoryBudgetError(
        f"memory: estimated peak {est.line()} exceeds the watchdog line {limit / GB:.2f} GB "
        f"(memory.budget_gb={cfg.memory.budget_gb:g} x memory.stop_fraction={cfg.memory.stop_fraction:g}) "
        f"for {cfg.train.method} / {cfg.train.strategy} on {cfg.scaling.num_workers} worker(s){hint}")
