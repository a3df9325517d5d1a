"""TrainConfig: everything `rayft train` reads, field by field."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from ..config import ConfigError, opt, section


@dataclass
class RunSection:
    dir: str = opt("runs", "parent directory of run directories (local path)")
    name: str = opt("train", "run name; the run directory is run.dir/run.name. Rerunning the same "
                    "name resumes from its latest checkpoint instead of starting over")
    seed: int = opt(0, "seed for model init, data order, dropout and the train/val split")
    overwrite: bool = opt(False, "delete an existing run directory of this name and start from scratch")


@dataclass
class DataSection:
    path: str = opt("", "pairs file, directory or glob (JSONL, JSON or Parquet)")
    format: str = opt("auto", "auto | subtitle | prompt_response | alpaca | sharegpt "
                      "(auto detects per file from its first valid record)")
    val_fraction: float = opt(0.1, "fraction of pairs held out for validation, assigned by content "
                              "hash so a rerun gives the same split")
    val_path: str = opt("", "optional separate validation file/dir/glob (then val_fraction is not used)")
    max_seq_len: int = opt(512, "tokens per example; longer examples are truncated and counted")
    system_prompt: str = opt("", "system message added to every example without its own")
    language: str = opt("", "keep only rows of this language (e.g. en or zh); empty keeps all")

    def validate(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction: expected 0 <= value < 1, got {self.val_fraction}")
        if self.max_seq_len < 8:
            raise ConfigError(f"data.max_seq_len: expected >= 8, got {self.max_seq_len}")


@dataclass
class ModelSection:
    name: str = opt("tiny-qwen2", "HF hub id, local model directory, or preset: tiny-qwen2, "
                    "tiny-llama, smollm2-135m-instruct")
    trust_remote_code: bool = opt(False, "allow model repos to run their own Python code")
    dtype: str = opt("auto", "auto (bf16 on GPUs that support it, else float32) | float32 | bfloat16")


@dataclass
class LoraSection:
    r: int = opt(8, "LoRA rank")
    alpha: int = opt(16, "LoRA alpha (scale = alpha / r)")
    dropout: float = opt(0.05, "dropout on the LoRA input")
    target_modules: list[str] = opt(["q_proj", "k_proj", "v_proj", "o_proj"],
                                    "module names to adapt (or 'all-linear')")


@dataclass
class TrainSection:
    method: Literal["lora", "full"] = opt("lora", "lora (peft adapter) | full (all weights)")
    max_steps: int = opt(100, "optimizer steps to run (across epochs)")
    batch_size: int = opt(4, "examples per worker per micro-batch")
    grad_accum: int = opt(1, "micro-batches per optimizer step")
    lr: float = opt(2e-4, "peak learning rate (AdamW)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    warmup_steps: int = opt(10, "linear warmup steps before cosine decay")
    min_lr_ratio: float = opt(0.1, "cosine decays to lr * min_lr_ratio")
    max_grad_norm: float = opt(1.0, "gradient clipping norm (0 disables)")
    log_every: int = opt(5, "report metrics every N steps")
    checkpoint_every: int = opt(50, "checkpoint every M steps (and always at the end)")
    eval_every: int = opt(0, "validation loss every N steps (0: only at the end)")
    keep_checkpoints: int = opt(2, "checkpoints kept in storage (latest ones)")
    gradient_checkpointing: bool = opt(False, "recompute activations in backward to save memory")
    stop_after_steps: int = opt(0, "stop (checkpointed) after this many steps of this launch, "
                                "without finishing; rerun to resume (0 disables)")

    def validate(self) -> None:
        for k in ("max_steps", "batch_size", "grad_accum", "log_every", "checkpoint_every"):
            if getattr(self, k) < 1:
                raise ConfigError(f"train.{k}: expected >= 1, got {getattr(self, k)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr: expected > 0, got {self.lr}")


@dataclass
class ScalingSection:
    num_workers: int = opt(2, "Ray Train workers (data-parallel)")
    cpus_per_worker: float = opt(1.0, "CPUs per worker (fractional allowed, e.g. 0.5)")
    memory_per_worker_gb: float = opt(0.0, "memory reserved per worker for scheduling (0: none)")
    use_gpu: bool = opt(False, "one GPU per worker")
    max_failures: int = opt(2, "worker failures to recover from (restart from the last checkpoint)")
    torch_threads: int = opt(0, "torch intra-op threads per worker (0: derive from cpus_per_worker)")
    timeout_s: float = opt(0.0, "give up if the run has not finished after this many seconds (0: never)")

    def validate(self) -> None:
        if self.num_workers < 1:
            raise ConfigError(f"scaling.num_workers: expected >= 1, got {self.num_workers}")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"scaling.cpus_per_worker: expected > 0, got {self.cpus_per_worker}")


@dataclass
class GenerateSection:
    prompt: str = opt("", "after training, reload the saved adapter and answer this prompt")
    max_new_tokens: int = opt(48, "tokens to generate for the sample prompt")


@dataclass
class TrainConfig:
    run: RunSection = section(RunSection, "where the run goes and its name")
    data: DataSection = section(DataSection, "the pairs to train on")
    model: ModelSection = section(ModelSection, "the base model")
    lora: LoraSection = section(LoraSection, "LoRA adapter (train.method=lora)")
    train: TrainSection = section(TrainSection, "optimisation")
    scaling: ScalingSection = section(ScalingSection, "Ray Train workers and failures")
    generate: GenerateSection = section(GenerateSection, "sample generation after training")

    def validate(self) -> None:
        if not self.data.path:
            raise ConfigError("data.path is required (a pairs file, directory or glob)")
