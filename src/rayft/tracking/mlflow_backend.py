"""MLflow adapter: one MLflow run per rayft run, through ``MlflowClient`` (no global state:
several runs can be tracked from one process). ``mlflow.uri`` names a tracking server or a
store; empty: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<run.dir>/mlflow.db`` with artifacts
in ``<run.dir>/mlartifacts``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import ConfigError, _shown, uri_scheme

#: MLflow's per-value limit for params (6000 characters since MLflow 2.x)
PARAM_MAX = 6000


def _now_ms() -> int:
    import time
    return int(time.time() * 1000)


def resolve_uri(uri: str, run_dir: Path) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri:
        return uri
    return "sqlite:///" + str((Path(run_dir).resolve().parent / "mlflow.db"))


class MlflowBackend:
    name = "mlflow"

    def __init__(self, sec: Any, run_dir: Path, run_name: str, tags: dict[str, str], prev: dict | None):
        # A server that does not answer fails the start in seconds, not after MLflow's
        # default 7 retries with backoff (minutes); the user's own settings win.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        # "View run ... at <url>" on stdout at every end of a run: stdout is for the run directory
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        from .. import _env
        if not _env.verbose():  # "Creating initial MLflow database tables..." and alike: not for the console
            import logging
            for name in ("mlflow", "alembic"):
                logging.getLogger(name).setLevel(logging.WARNING)
        from mlflow.entities import RunStatus  # noqa: F401  (imported early: a missing mlflow fails here)
        from mlflow.tracking import MlflowClient

        self.uri = resolve_uri(sec.uri, run_dir)
        if uri_scheme(self.uri) not in ("http", "https", "sqlite", "file", "postgresql", "mysql", "databricks",
                                        None):
            raise ConfigError(f"mlflow.uri: {_shown(self.uri)}: not an MLflow tracking URI (http(s)://host:port, "
                              "sqlite:///file.db, a local directory...)")
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment = sec.experiment
        exp_id = self._experiment(run_dir)
        self.run_id = None
        if prev and prev.get("run_id") and prev.get("uri") == self.uri:
            try:  # a resumed run continues the tracked run of its earlier launch
                self.client.get_run(prev["run_id"])
                self.run_id = prev["run_id"]
                self.client.update_run(self.run_id, status="RUNNING")
            except Exception:  # noqa: BLE001 - deleted meanwhile: start a new one
                self.run_id = None
        self.resumed = self.run_id is not None
        if self.run_id is None:
            self.run_id = self.client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id

    def _experiment(self, run_dir: Path) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        art = None
        if uri_scheme(self.uri) == "sqlite":  # a local store: artifacts beside it, not in the cwd
            art = (Path(run_dir).resolve().parent / "mlartifacts").as_uri()
        try:
            return self.client.create_experiment(self.experiment, artifact_location=art)
        except Exception:  # noqa: BLE001 - created by a concurrent run meanwhile
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise
            return exp.experiment_id

    def where(self) -> str:
        return f"mlflow {_shown(self.uri)} experiment '{self.experiment}' run {self.run_id}"

    def params(self, flat: dict[str, str], nested: dict) -> None:
        from mlflow.entities import Param

        items = {k: v[:PARAM_MAX] for k, v in flat.items()}
        if self.resumed:  # params are immutable in MLflow: log only the keys the first launch did not
            have = self.client.get_run(self.run_id).data.params
            changed = sorted(k for k, v in items.items() if k in have and have[k] != v)
            items = {k: v for k, v in items.items() if k not in have}
            if changed:
                self.client.set_tag(self.run_id, "rayft.params_changed_on_resume", ",".join(changed)[:5000])
        params = [Param(k, v) for k, v in items.items()]
        for i in range(0, len(params), 100):  # MLflow's log_batch takes at most 100 params
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = _now_ms()
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, ts, step) for k, v in values.items()])

    def event(self, tag: str, text: str, step: int) -> None:
        self.client.log_text(self.run_id, text + "\n", f"events/{tag}_step{step:07d}.txt")

    def artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def summary(self, values: dict[str, Any]) -> None:
        from mlflow.entities import Metric, RunTag

        ts = _now_ms()
        values = {k: v for k, v in values.items() if v is not None}
        nums = [Metric(f"final/{k}", float(v), ts, 0) for k, v in values.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)]
        tags = [RunTag(f"rayft.{k}", str(v)[:5000]) for k, v in values.items() if not isinstance(v, (int, float))
                or isinstance(v, bool)]
        self.client.log_batch(self.run_id, metrics=nums, tags=tags)

    def close(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")

    def state(self) -> dict:
        return {"run_id": self.run_id, "uri": self.uri, "experiment": self.experiment}
