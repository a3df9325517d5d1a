"""SweepConfig: everything `rayft sweep` reads, field by field."""
from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from ..config import ConfigError, FsPath, Section, opt, section


class SweepSection(Section):
    dir: FsPath = opt("sweeps", "parent directory of sweep directories: a local path or a pyarrow.fs URI, e.g. "
                      "s3://bucket/sweeps?endpoint_override=host:port&scheme=http (Tune's experiment, the "
                      "trials' runs and the summary files go to the bucket)")
    name: str = opt("sweep", "sweep name; the sweep directory is sweep.dir/sweep.name. Rerunning the same "
                    "name resumes an interrupted sweep (Tuner.restore) instead of starting over")
    overwrite: bool = opt(False, "delete an existing sweep directory of this name and start from scratch")
    search: Literal["auto", "random", "optuna"] = opt(
        "auto", "auto (optuna when installed and the space has no grid, else random) | random "
        "(grid values crossed, the rest sampled) | optuna (TPE; no grid)")
    num_samples: int = opt(8, "trials to sample (random/optuna); with grid parameters, samples per grid point", ge=1)
    seed: int = opt(0, "seed of the search algorithm (same seed, same configurations)")
    max_concurrent: int = opt(0, "trials running at once; 0: as many as the cluster's CPUs/GPUs/memory hold", ge=0)
    trial_cpus: float = opt(0.1, "CPUs reserved for each trial's driver (it only waits on its Ray Train "
                            "workers, whose CPUs come from the train config's scaling section)", gt=0)
    trial_memory_gb: float = opt(1.5, "memory reserved for each trial's driver side: the Tune trial actor, "
                                 "the Ray Train controller and its helper actors (~1.4 GB unique memory "
                                 "measured with the tiny model); worker memory comes from scaling.*", ge=0)
    trial_retries: int = opt(1, "times Tune restarts a failed trial; it resumes from its own latest "
                             "checkpoint (worker failures inside a trial are scaling.max_failures)", ge=0)
    metric: Literal["val_loss"] = opt("val_loss", "what trials are ranked by (lower is better)")

    @model_validator(mode="after")
    def _plain_name(self):
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ConfigError(f"sweep.name: expected a plain directory name, got {self.name!r}")
        return self


class SchedulerSection(Section):
    kind: Literal["asha", "none"] = opt("asha", "asha: stop trials whose validation loss trails their "
                                        "peers at a rung | none: run every trial to the end")
    grace_period: int = opt(4, "steps every trial runs before ASHA may stop it (first rung)", ge=1)
    reduction_factor: float = opt(3, "ASHA keeps the best 1/reduction_factor of trials at each rung", gt=1)



class BaseSection(Section):
    recipe: str = opt("configs/tiny.yaml", "the `rayft train` recipe every trial starts from")
    overrides: dict = opt({}, "train config keys fixed for every trial, nested (train: {max_steps: 40}) "
                          "or dotted (train.max_steps: 40); applied on top of the recipe")


class SweepConfig(Section):
    sweep: SweepSection = section(SweepSection, "where the sweep goes, the search algorithm, concurrency")
    scheduler: SchedulerSection = section(SchedulerSection, "early stopping on validation loss")
    base: BaseSection = section(BaseSection, "the train config every trial starts from")
    space: dict = opt({}, "search space over train config keys: `train.lr: {loguniform: [1e-4, 1e-2]}`, "
                      "`lora.r: {choice: [4, 8, 16]}`, `train.warmup_steps: {grid: [0, 5]}`, "
                      "`lora.dropout: {uniform: [0.0, 0.1]}` (nested keys work too)")
