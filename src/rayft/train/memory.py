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

from dataclasses import asdict, dataclass, field

from ..config import ConfigError
from .config import TrainConfig
from .deepspeed import CPU_SUB_GROUP_SIZE, NVME_PARAM_BUFFER_COUNT

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
#: the CPU sub_group_size and nvme parameter buffer_count ds_config sets (one definition, in deepspeed.py)
SUB_GROUP, NVME_PARAM_BUFFERS = CPU_SUB_GROUP_SIZE, NVME_PARAM_BUFFER_COUNT
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
    embed_params: int = 0  # input + output embeddings (once when tied)
    largest_non_embed: int = 0

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
    largest = largest_param(shape, t.vocab_chunks if t.strategy == "zero3" else 0)
    if t.method == "lora":
        T, largest_trainable = shape.lora_params, 0
    elif t.freeze_embeddings:
        T, largest_trainable = N - shape.embed_params, shape.largest_non_embed
    else:
        T, largest_trainable = N, largest
    zero = t.strategy in ("zero2", "zero3")
    opt_nvme = t.offload_optimizer == "nvme"
    p = {}
    p["runtime"] = (cfg.memory.runtime_gb or RUNTIME_GB + (DEEPSPEED_RUNTIME_GB if zero else 0.0)) * GB

    if t.strategy == "zero3":
        if t.offload_params == "nvme":
            # buffer pool sized for the largest parameter partition (see nvme_param_buffer)
            p["weights"] = NVME_PARAM_BUFFERS * nvme_param_buffer(shape, W, t.vocab_chunks) * B
        else:
            p["weights"] = N * B / W
        # the largest parameter all-gathered, the layer being computed, and the largest trainable
        # parameter's full-size gradient before it is reduce-scattered
        p["gathered"] = (largest + shape.layer_params + largest_trainable) * B
    elif cfg.model.quantize in ("int8", "nf4"):  # ddp only: bitsandbytes linears, embeddings bf16 (lowbit.py)
        from .lowbit import BASE_BYTES
        p["weights"] = (N - shape.embed_params) * BASE_BYTES[cfg.model.quantize] + shape.embed_params * 2
    else:  # model.quantize=bf16-storage (ddp only): the frozen base in 2 bytes (lowbit.py; norms negligible)
        p["weights"] = N * (2 if cfg.model.quantize == "bf16-storage" else B)

    if zero:
        p["master"] = 0.0 if opt_nvme else 4 * T / W
        p["grads"] = 4 * T / W + (largest_trainable * B if t.strategy == "zero2" else 0)
        if opt_nvme:
            # swap buffers: 4 x the largest sub-group (fp32 weights, grads, 2 moments). DeepSpeed
            # fills a sub-group with this rank's parameter partitions up to sub_group_size elements
            # (stage3._create_fp16_sub_groups: partition_numel, not the whole parameter), or one
            # partition if that is bigger (measured: the vocab_chunks=8 row's RSS after the build
            # was 0.33 GB over the estimate that divided sub_group_size by the workers)
            p["optimizer"] = 4 * 4 * min(T / W, max(SUB_GROUP, largest_trainable / W))
        else:
            p["optimizer"] = 8 * T / W
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
    # train.loss_chunk: logits exist for one chunk of labelled positions at a time (chunked_loss.py)
    logit_rows = min(tokens, t.loss_chunk) if t.loss_chunk else tokens
    p["activations"] = act + attn + LOGIT_COPIES * logit_rows * shape.vocab * 4
    if cfg.model.quantize != "none":
        # the output head is stored in bf16 (lowbit.py) and upcast to an fp32 copy for every
        # forward: vocab x hidden x 4 bytes (measured: 0.54 GB on Qwen2.5-0.5B, the whole gap
        # between this estimate and the int8/nf4 peaks before this term)
        p["head_upcast"] = shape.vocab * shape.hidden * 4
    if cfg.model.quantize in ("int8", "nf4") and cfg.model.init != "random":
        # a loaded base is quantized tensor by tensor as it is read (lowbit.load_quantized, pread:
        # no file pages mapped); while loading, the compact weights plus a transient bf16 copy of
        # the embedding are resident (measured on Qwen2.5-1.5B nf4: 1.43 GB above the process
        # before loading, this term 1.54 GB); the peak is the larger of that and the training step
        # (model.init=random builds and quantizes one layer at a time: lowbit.random_quantized)
        steady = sum(v for k, v in p.items() if k != "runtime")
        p["load"] = max(0.0, p["weights"] + 2 * shape.embed_params - steady)
    return Estimate(p)


def largest_param(shape: ModelShape, vocab_chunks: int = 0) -> int:
    """Elements of the largest parameter: with train.vocab_chunks (ZeRO-3) the embedding/head is
    vocabulary slices (vocab_chunks.py), each its own parameter."""
    if vocab_chunks and shape.embed_params:
        return max(shape.largest_non_embed, -(-shape.vocab // vocab_chunks) * shape.hidden)
    return shape.largest_param


def nvme_param_buffer(shape: ModelShape, world: int, vocab_chunks: int = 0) -> int:
    """Elements per nvme parameter buffer: must hold the largest parameter's partition."""
    return max(int(1e7), -(-largest_param(shape, vocab_chunks) // world))


def stop_line_bytes(cfg: TrainConfig) -> float:
    """RSS at which the watchdog stops the run (budget x stop_fraction)."""
    return cfg.memory.budget_gb * cfg.memory.stop_fraction * GB


def _with(cfg: TrainConfig, **sections) -> TrainConfig:
    # model_copy: like dataclasses.replace, no validation (suggestions are checked by estimate)
    return cfg.model_copy(update={k: getattr(cfg, k).model_copy(update=v) for k, v in sections.items()})


def suggestions(cfg: TrainConfig, shape: ModelShape, dtype: str, limit: float) -> list[str]:
    """Concrete changes whose estimate fits under ``limit`` bytes, the same job first (cheap
    knobs, then ZeRO-3 over more workers, then nvme offload), then smaller jobs (LoRA, shorter
    sequences). Each is printed as the overrides to add and its estimate."""
    t, W = cfg.train, cfg.scaling.num_workers
    out: list[str] = []

    def fits(label: str, new: TrainConfig) -> bool:
        e = estimate(new, shape, dtype)
        if e.total <= limit:
            out.append(f"{label} -> {e.total / GB:.2f} GB")
            return True
        return False

    if not t.gradient_checkpointing:
        fits("train.gradient_checkpointing=true", _with(cfg, train={"gradient_checkpointing": True}))
    if t.batch_size > 1:
        fits(f"train.batch_size=1 train.grad_accum={t.batch_size * t.grad_accum} (same examples per step)",
             _with(cfg, train={"batch_size": 1, "grad_accum": t.batch_size * t.grad_accum}))
    base = {"gradient_checkpointing": True, "batch_size": 1, "grad_accum": t.batch_size * t.grad_accum}
    prefix = "" if t.gradient_checkpointing and t.batch_size == 1 else "(with the above) "
    for opt_off, par_off, what in (("none", "none", ""), ("nvme", "none", " train.offload_optimizer=nvme"),
                                   ("nvme", "nvme", " train.offload_optimizer=nvme train.offload_params=nvme")):
        done = False
        for w in sorted({W, 2, 4, 8}):
            if w < W or (w == W and t.strategy == "zero3" and (opt_off, par_off) == (t.offload_optimizer,
                                                                                      t.offload_params)):
                continue
            new = _with(cfg, train=dict(base, strategy="zero3", offload_optimizer=opt_off, offload_params=par_off),
                        scaling={"num_workers": w})
            if fits(f"{prefix}train.strategy=zero3 scaling.num_workers={w}{what}", new):
                done = True
                break
        if done:
            break
    if t.method == "full" and not t.freeze_embeddings and shape.embed_params and not t.vocab_chunks:
        for w in sorted({W, 2, 4, 8}):  # the embedding trained, one vocabulary slice gathered at a time
            if w >= W and fits(f"{prefix}train.vocab_chunks=8 train.strategy=zero3 scaling.num_workers={w} "
                               "train.offload_optimizer=nvme", _with(cfg, train=dict(
                                   base, vocab_chunks=8, strategy="zero3", offload_optimizer="nvme"),
                                   scaling={"num_workers": w})):
                break
    if t.method == "full" and not t.freeze_embeddings and shape.embed_params:
        for w in sorted({W, 2, 4, 8}):
            if w >= W and fits(f"{prefix}train.freeze_embeddings=true train.strategy=zero3 scaling.num_workers={w} "
                               "train.offload_optimizer=nvme", _with(cfg, train=dict(
                                   base, freeze_embeddings=True, strategy="zero3", offload_optimizer="nvme"),
                                   scaling={"num_workers": w})):
                break
    if t.method == "full":
        fits(f"{prefix}train.method=lora (train an adapter instead of every weight)",
             _with(cfg, train=dict(base, method="lora")))
    if cfg.data.max_seq_len > 64:
        fits(f"{prefix}data.max_seq_len={cfg.data.max_seq_len // 2}",
             _with(cfg, train=base, data={"max_seq_len": cfg.data.max_seq_len // 2}))
    return out[:4]


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
        "; none of gradient checkpointing, batch 1, ZeRO-3 over up to 8 workers, nvme offload, LoRA or "
        "half the sequence length fits - use a smaller model or a larger memory.budget_gb")
    raise MemoryBudgetError(
        f"memory: estimated peak {est.line()} exceeds the watchdog line {limit / GB:.2f} GB "
        f"(memory.budget_gb={cfg.memory.budget_gb:g} x memory.stop_fraction={cfg.memory.stop_fraction:g}) "
        f"for {cfg.train.method} / {cfg.train.strategy} on {cfg.scaling.num_workers} worker(s){hint}")
