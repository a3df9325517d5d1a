"""TrainConfig: everything `rayft train` reads, field by field."""
from __future__ import annotations

from typing import Literal

from pydantic import ValidationInfo, model_validator

from ..config import ConfigError, FsPath, LocalPath, Section, complete, opt, section
from ..data.formats import FORMATS
from ..tracking.config import TRACKING_HELP, MlflowSection, WandbSection
from ..tracking.config import Backend as TrackingBackend
from .guard import GuardCfg

#: data.format values: auto or one of the readers' formats (rayft.data.formats.FORMATS)
DataFormat = Literal[("auto", *FORMATS)]  # type: ignore[valid-type]


class RunSection(Section):
    dir: FsPath = opt("runs", "parent directory of run directories: a local path or a pyarrow.fs URI, e.g. "
                      "s3://bucket/runs?endpoint_override=host:9000&scheme=http (checkpoints go there through "
                      "Ray Train; credentials from the AWS environment variables)")
    name: str = opt("train", "run name; the run directory is run.dir/run.name. Rerunning the same "
                    "name resumes from its latest checkpoint instead of starting over")
    seed: int = opt(0, "seed for model init, data order, dropout and the train/val split")
    overwrite: bool = opt(False, "delete an existing run directory of this name and start from scratch")


class DataSection(Section):
    path: LocalPath = opt("", "pairs file, directory or glob (JSONL, JSON, Parquet or Arrow; a datasets "
                          "save_to_disk folder; a glob may match folders); local paths")
    format: DataFormat = opt("auto", f"auto | {' | '.join(FORMATS)} "
                             "(auto detects per file from its first valid record)")
    val_fraction: float = opt(0.1, "fraction of pairs held out for validation, assigned by content "
                              "hash so a rerun gives the same split", ge=0, lt=1)
    val_path: LocalPath = opt("", "optional separate validation file/dir/glob (then val_fraction is not used)")
    max_seq_len: int = opt(512, "tokens per example; longer examples are truncated and counted", ge=8)
    system_prompt: str = opt("", "system message added to every example without its own")
    language: str = opt("", "keep only rows of this language (e.g. en or zh); empty keeps all")
    min_val_rows: int = opt(0, "with val_fraction: move training rows into validation until each language "
                            "has this many (at most half its rows; hash-nearest rows, deterministic); a "
                            "language under 10 validation rows is warned about either way", ge=0)
    sources: list[dict] = opt(
        [], "a weighted mixture instead of data.path: [{path, format, columns, weight | max_rows, name}]; "
        "columns maps rayft fields to the source's columns (e.g. {prompt: question, response: answer}); "
        "weight multiplies the source's rows (0.5: a seeded half, 2: twice), max_rows caps them; "
        "report.json lists each source's rows read/kept/rejected/used (rayft.data.mixture)")
    train_on: Literal["last", "all_assistant"] = opt(
        "last", "which assistant turns carry loss: last (the final reply; in a tool-calling conversation "
        "every assistant turn after the last user turn, tool calls included) | all_assistant (every "
        "assistant turn of a multi-turn conversation, each masked separately); tool results never do")
    packing: bool = opt(
        False, "pack several training examples into each row of up to max_seq_len tokens (greedy "
        "first-fit in a fixed seeded order, once per worker), each attending only to itself (position "
        "ids restart per example; transformers builds the block-diagonal mask, or flash-attention's "
        "varlen kernels use them). train.batch_size then counts packed rows. Saves the compute a padded "
        "batch of uneven lengths spends on padding; validation stays unpacked (rayft.data.packing)")


class ModelSection(Section):
    name: str = opt("tiny-qwen2", "HF hub id, local model directory, or preset: tiny-qwen2, "
                    "tiny-llama, smollm2-135m-instruct")
    trust_remote_code: bool = opt(False, "allow model repos to run their own Python code")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt(
        "auto", "auto (bfloat16 on GPU workers, else float32) | float32 | bfloat16 | float16 (GPU workers "
        "only: CPU kernels have no fp16 training path)")
    init: Literal["pretrained", "random"] = opt(
        "pretrained", "pretrained: load the weights; random: build the architecture from the model's "
        "config.json with seeded random weights (memory/throughput benchmarks of real architectures "
        "without downloading them; the result is not a useful model)")
    adapter: str = opt("", "train.method=lora: start from this adapter directory's weights "
                       "(adapter_model.safetensors; e.g. a registry champion's artifacts/adapter) instead "
                       "of a fresh LoRA init; lora.r and lora.target_modules must match it")
    quantize: Literal["none", "int8", "nf4", "bf16-storage"] = opt(
        "none", "train.method=lora: how the frozen base is stored. none (model.dtype) | int8 (base linear "
        "layers in 8 bits + a scale per row, ~1 byte/param) | nf4 (4-bit NormalFloat, QLoRA's format, ~0.52 "
        "byte/param) - both quantized by bitsandbytes (CPU backend), computed in fp32, embeddings stored "
        "bf16 | bf16-storage (every linear and embedding weight of the base stored bfloat16, half the "
        "bytes, computed in fp32 on CPU). LoRA weights and norms fp32 (rayft.train.lowbit); `rayft export` "
        "merges into the fp32 base the adapter was trained against")


class LoraSection(Section):
    r: int = opt(8, "LoRA rank", ge=1)
    alpha: int = opt(16, "LoRA alpha (scale = alpha / r)", gt=0)
    dropout: float = opt(0.05, "dropout on the LoRA input", ge=0, lt=1)
    target_modules: list[str] = opt(["q_proj", "k_proj", "v_proj", "o_proj"],
                                    "module names to adapt (or 'all-linear')")


class TrainSection(Section):
    method: Literal["lora", "full"] = opt("lora", "lora (peft adapter) | full (all weights)")
    max_steps: int = opt(100, "optimizer steps to run (across epochs)", ge=1)
    batch_size: int = opt(4, "examples per worker per micro-batch", ge=1)
    grad_accum: int = opt(1, "micro-batches per optimizer step", ge=1)
    lr: float = opt(2e-4, "peak learning rate (AdamW)", gt=0)
    weight_decay: float = opt(0.0, "AdamW weight decay", ge=0)
    warmup_steps: int = opt(10, "linear warmup steps before cosine decay", ge=0)
    min_lr_ratio: float = opt(0.1, "cosine decays to lr * min_lr_ratio", ge=0, le=1)
    max_grad_norm: float = opt(1.0, "gradient clipping norm (0 disables)", ge=0)
    log_every: int = opt(5, "report metrics every N steps", ge=1)
    checkpoint_every: int = opt(50, "checkpoint every M steps (and always at the end)", ge=1)
    eval_every: int = opt(0, "validation loss every N steps (0: only at the end)", ge=0)
    keep_checkpoints: int = opt(2, "checkpoints kept in storage (latest ones)", ge=1)
    gradient_checkpointing: bool = opt(False, "recompute activations in backward to save memory")
    loss_chunk: int = opt(0, "cross-entropy N labelled positions at a time from the decoder's hidden "
                          "states, never the batch x seq x vocab logits (train/chunked_loss.py; "
                          "any strategy); 0: transformers' loss over full logits", ge=0)
    vocab_chunks: int = opt(0, "zero3 only: split the input embedding and output head into N "
                            "vocabulary slices that ZeRO-3 gathers, reduces and swaps one at a time "
                            "(train/vocab_chunks.py): a 152k-token embedding is never whole with its "
                            "full gradient on a worker; 0: off", ge=0)
    stop_after_steps: int = opt(0, "stop (checkpointed) after this many steps of this launch, "
                                "without finishing; rerun to resume (0 disables)", ge=0)
    freeze_embeddings: bool = opt(
        False, "method=full only: keep the input/output embeddings frozen and train every other "
        "weight. Large-vocabulary models (Qwen2.5: 152k tokens) spend a quarter of their weights "
        "there, and under ZeRO-3 their full-size gradient and optimizer buffers dominate a "
        "small worker's memory")
    strategy: Literal["ddp", "zero2", "zero3"] = opt(
        "ddp", "ddp (every worker holds the whole model) | zero2 (DeepSpeed: optimizer states and "
        "gradients sharded across workers) | zero3 (DeepSpeed: parameters sharded too)")
    offload_optimizer: Literal["none", "cpu", "nvme"] = opt(
        "none", "DeepSpeed optimizer offload (zero2/zero3). cpu moves it to host memory (saves GPU "
        "memory only: on CPU workers it stays in the same process); nvme swaps optimizer states to "
        "train.nvme_path on local disk (needs libaio)")
    offload_params: Literal["none", "cpu", "nvme"] = opt(
        "none", "DeepSpeed parameter offload (zero3 only): nvme keeps parameters on local disk and "
        "fetches each layer when it runs (ZeRO-Infinity)")
    nvme_path: str = opt("", "local directory for nvme offload swap files (default: "
                         "<run dir>/nvme_swap); fast local disk, never a network filesystem")
    deepspeed_config: str = opt("", "optional JSON file merged over the generated DeepSpeed config "
                                "(zero2/zero3); unknown keys are refused before launch")

    @model_validator(mode="after")
    def _strategy_options(self):
        if self.strategy == "ddp" and (self.offload_optimizer != "none" or self.offload_params != "none"):
            raise ConfigError("train.offload_optimizer/offload_params need a DeepSpeed strategy: "
                              "set train.strategy=zero2 or zero3")
        if self.offload_params != "none" and self.strategy != "zero3":
            raise ConfigError(f"train.offload_params={self.offload_params} needs train.strategy=zero3 "
                              f"(only ZeRO-3 partitions parameters), got {self.strategy}")
        if self.freeze_embeddings and self.method != "full":
            raise ConfigError("train.freeze_embeddings applies to train.method=full (LoRA already "
                              "freezes every base weight)")
        if self.vocab_chunks and self.strategy != "zero3":
            raise ConfigError(f"train.vocab_chunks={self.vocab_chunks} needs train.strategy=zero3 (only ZeRO-3 "
                              f"partitions the embedding; with {self.strategy} it is whole on every worker)")
        if self.deepspeed_config and self.strategy == "ddp":
            raise ConfigError("train.deepspeed_config is only used with train.strategy=zero2 or zero3")
        return self


class ScalingSection(Section):
    num_workers: int = opt(2, "Ray Train workers (data-parallel)", ge=1)
    cpus_per_worker: float = opt(1.0, "CPUs per worker (fractional allowed, e.g. 0.5)", gt=0)
    memory_per_worker_gb: float = opt(0.0, "memory reserved per worker for scheduling (0: none)", ge=0)
    use_gpu: bool = opt(False, "one GPU per worker")
    max_failures: int = opt(2, "worker failures to recover from (restart from the last checkpoint; -1: unlimited)",
                           ge=-1)
    torch_threads: int = opt(0, "torch intra-op threads per worker (0: derive from cpus_per_worker)", ge=0)


class MemorySection(Section):
    budget_gb: float = opt(0.0, "peak resident memory (RSS) allowed per worker, in GB (2**30 bytes); "
                           "0 disables the estimate check and the watchdog", ge=0)
    stop_fraction: float = opt(0.9, "the watchdog checkpoints and stops the run once a worker's RSS "
                               "passes this fraction of memory.budget_gb", gt=0, le=1)
    sample_interval_s: float = opt(0.05, "how often each worker's watchdog samples its RSS (the kernel's "
                                   "high-water mark is checked too, so short spikes are not missed)", gt=0)
    refuse_over_estimate: bool = opt(True, "refuse to launch when the pre-launch estimate exceeds the "
                                     "watchdog line (budget x stop_fraction); false only prints it")
    runtime_gb: float = opt(0.0, "estimator: per-worker memory before any model (torch, transformers, "
                            "Ray Train, DeepSpeed); 0 uses the measured default for this install", ge=0)
    malloc: Literal["auto", "compact", "default"] = opt(
        "auto", "glibc malloc in the workers. compact (1 MB mmap/trim thresholds, 2 arenas) returns "
        "freed tensors to the OS: ZeRO-3 LoRA 0.5B peaked at 2.98 GB with it, 3.74 GB without; but "
        "it costs speed (DDP LoRA SmolLM2-135M: 179 vs 218 tokens/s). default: glibc as is. auto: "
        "compact when memory.budget_gb > 0 or train.strategy is zero2/zero3, else default")


class GenerateSection(Section):
    prompt: str = opt("", "after training, reload the saved adapter and answer this prompt")
    max_new_tokens: int = opt(48, "tokens to generate for the sample prompt", ge=1)


class TrainConfig(Section):
    run: RunSection = section(RunSection, "where the run goes and its name")
    data: DataSection = section(DataSection, "the pairs to train on")
    model: ModelSection = section(ModelSection, "the base model")
    lora: LoraSection = section(LoraSection, "LoRA adapter (train.method=lora)")
    train: TrainSection = section(TrainSection, "optimisation")
    scaling: ScalingSection = section(ScalingSection, "Ray Train workers and failures")
    memory: MemorySection = section(MemorySection, "per-worker memory budget: pre-launch estimate and "
                                    "RSS watchdog (see configs/profiles/)")
    guard: GuardCfg = section(GuardCfg, "training-time guard: a NaN/Inf loss rolls back to the last "
                              "healthy checkpoint with a lower learning rate; rising validation loss warns")
    generate: GenerateSection = section(GenerateSection, "sample generation after training")
    tracking: list[TrackingBackend] = opt([], TRACKING_HELP)
    mlflow: MlflowSection = section(MlflowSection, "MLflow settings (tracking=[mlflow])")
    wandb: WandbSection = section(WandbSection, "Weights & Biases settings (tracking=[wandb])")

    @model_validator(mode="after")
    def _required(self, info: ValidationInfo):
        if complete(info) and not self.data.path and not self.data.sources:
            raise ConfigError("data.path is required (a pairs file, directory or glob), or data.sources")
        if self.model.quantize != "none" and (self.train.method != "lora" or self.train.strategy != "ddp"):
            raise ConfigError(f"model.quantize={self.model.quantize} stores a frozen base compactly: it needs "
                              f"train.method=lora and train.strategy=ddp, got {self.train.method} and "
                              f"{self.train.strategy}")
        if self.data.path and self.data.sources:
            raise ConfigError("data.path and data.sources: give one (data.sources lists every source)")
        return self
