"""Config of experiment tracking: ``tracking: [tensorboard, mlflow, wandb]`` plus one section
per backend that needs settings (``mlflow.uri``, ``wandb.mode``...). Used by train (and by the
stages that embed TrainConfig)."""
from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from ..config import ConfigError, Section, _mask_text, _shown, opt

Backend = Literal["tensorboard", "mlflow", "wandb"]

TRACKING_HELP = ("experiment trackers to log to (none by default): tensorboard (event files under "
                 "<run dir>/tb/), mlflow (server or store at mlflow.uri), wandb (offline files under "
                 "<run dir>/wandb/ unless wandb.mode=online). Logged from the driver: the resolved config "
                 "(secrets masked), rank 0's per-step metrics (loss, lr, tokens/s, val loss, peak RSS per "
                 "worker), guard events, report.json and loss.png, the adapter's path")


class MlflowSection(Section):
    uri: str = opt("", "tracking=[mlflow]: MLflow tracking URI, e.g. http://127.0.0.1:5000 (a server) or "
                   "sqlite:///path/mlflow.db; empty: $MLFLOW_TRACKING_URI, else sqlite:///<run.dir>/mlflow.db "
                   "(`mlflow ui --backend-store-uri` that). Credentials go in MLFLOW_TRACKING_TOKEN or "
                   "MLFLOW_TRACKING_USERNAME/PASSWORD, never here")
    experiment: str = opt("rayft", "tracking=[mlflow]: experiment name (created when missing)")

    @field_validator("uri")
    @classmethod
    def _no_credentials(cls, v: str) -> str:
        # the config is written to config.yaml and report.json and logged as params: no secrets in it
        if _mask_text(v) != v:
            raise ConfigError(f"mlflow.uri: {_shown(v)} carries credentials; give them in MLFLOW_TRACKING_USERNAME/"
                              "MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN instead (the config is written to "
                              "the run directory and logged)")
        return v


class WandbSection(Section):
    project: str = opt("rayft", "tracking=[wandb]: W&B project")
    entity: str = opt("", "tracking=[wandb]: W&B entity (team or user; empty: your default)")
    mode: Literal["offline", "online"] = opt(
        "offline", "tracking=[wandb]: offline writes the run under <run dir>/wandb/ and sends nothing "
        "(upload later with `wandb sync`); online sends it (WANDB_API_KEY from the environment)")
