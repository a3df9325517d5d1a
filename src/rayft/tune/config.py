"""SweepConfig: everything `rayft sweep` reads, field by field."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import ConfigError, opt, section


@dataclass
class SweepSection:
    dir: str = opt("sweeps", "parent directory of sweep directories (local path)")
    name: str = opt("sweep", "sweep name; the sweep directory is sweep.dir/sweep.name. Rerunning the same "
                    "name resumes an interrupted sweep (Tuner.restore) instead of starting over")
    overwrite: bool = opt(False, "delete an existing sweep directory of this name and start from scratch")
    search: Literal["auto", "random", "optuna"] = opt(
        "auto", "auto (optuna when installed and the space has no grid, else random) | random "
        "(grid values crossed, the rest sampled) | optuna (TPE; no grid)")
    num_samples: int = opt(8, "trials to sample (random/optuna); with grid parameters, samples per grid point")
    seed: int = opt(0, "seed of the search algorithm (same seed, same configurations)")
    max_concurrent: int = opt(0, "trials running at once; 0: as many as the cluster's CPUs/GPUs/memory hold")
    trial_cpus: float = opt(0.1, "CPUs reserved for each trial's driver (it only waits on its Ray Train "
                            "workers, whose CPUs come from the train config's scaling section)")
    trial_memory_gb: float = opt(1.5, "memory reserved for each trial's driver side: the Tune trial actor, "
                                 "the Ray Train controller and its helper actors (~1.4 GB unique memory "
                                 "measured with the tiny model); worker memory comes from scaling.*")
    trial_retries: int = opt(1, "times Tune restarts a failed trial; it resumes from its own latest "
                             "checkpoint (worker failures inside a trial are scaling.max_failures)")
    metric: Literal["val_loss"] = opt("val_loss", "what trials are ranked by (lower is better)")

    def validate(self) -> None:
        if self.num_samples < 1:
            raise ConfigError(f"sweep.num_samples: expected >= 1, got {self.num_samples}")
        if self.trial_cpus <= 0:
            raise ConfigError(f"sweep.trial_cpus: expected > 0 (fractions allowed), got {self.trial_cpus}")
        if self.trial_memory_gb < 0:
            raise ConfigError(f"sweep.trial_memory_gb: expected >= 0, got {self.trial_memory_gb}")
        if self.trial_retries < 0:
            raise ConfigError(f"sweep.trial_retries: expected >= 0, got {self.trial_retries}")
        if self.max_concurrent < 0:
            raise ConfigError(f"sweep.max_concurrent: expected >= 0, got {self.max_concurrent}")
        if not self.name or "/" in self.name:
            raise ConfigError(f"sweep.name: expected a plain directory name, got {self.name!r}")


@dataclass
class SchedulerSection:
    kind: Literal["asha", "none"] = opt("asha", "asha: stop trials whose validation loss trails their "
                                        "peers at a rung | none: run every trial to the end")
    grace_period: int = opt(4, "steps every trial runs before ASHA may stop it (first rung)")
    reduction_factor: float = opt(3, "ASHA keeps the best 1/reduction_factor of trials at each rung")

    def validate(self) -> None:
        if self.grace_period < 1:
            raise ConfigError(f"scheduler.grace_period: expected >= 1, got {self.grace_period}")
        if self.reduction_factor <= 1:
            raise ConfigError(f"scheduler.reduction_factor: expected > 1, got {self.reduction_factor}")


@dataclass
class BaseSection:
    recipe: str = opt("configs/tiny.yaml", "the `rayft train` recipe every trial starts from")
    overrides: dict = opt({}, "train config keys fixed for every trial, nested (train: {max_steps: 40}) "
                          "or dotted (train.max_steps: 40); applied on top of the recipe")


@dataclass
class SweepConfig:
    sweep: SweepSection = section(SweepSection, "where the sweep goes, the search algorithm, concurrency")
    scheduler: SchedulerSection = section(SchedulerSection, "early stopping on validation loss")
    base: BaseSection = section(BaseSection, "the train config every trial starts from")
    space: dict = opt({}, "search space over train config keys: `train.lr: {loguniform: [1e-4, 1e-2]}`, "
                      "`lora.r: {choice: [4, 8, 16]}`, `train.warmup_steps: {grid: [0, 5]}`, "
                      "`lora.dropout: {uniform: [0.0, 0.1]}` (nested keys work too)")
