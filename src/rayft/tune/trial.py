"""One Tune trial = one `rayft train` run (same run_training, same loop), in its own run dir.

Ray Train v2 runs inside Tune as a function trainable: the trial function builds and fits
the TorchTrainer; a Ray Train callback forwards the workers' reports to Tune. The trial's
Tune resources cover only this driver function; the trainer schedules its workers in its
own placement group (the sweep limits concurrency so both always fit).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from ..storage import atomic_write_json
from .space import data_key, trial_config


def _val_loss_callback():
    from ray.tune.integration.ray_train import TuneReportCallback

    class ValLossToTune(TuneReportCallback):
        """Forward the reports that carry val_loss, except the last one.

        Tune requires the sweep metric in every result it receives and ASHA ranks trials on
        it (the train-loss reports in between stay in the run's metrics.jsonl). The final
        report is held back and sent by run_trial once run_training has written the run dir:
        a STOP decision on it would otherwise kill the trial before report.json and adapter/.
        """

        def after_report(self, run_context, metrics, checkpoint):
            m = metrics[0] if metrics else {}
            if m.get("val_loss") is not None and m.get("step", 0) < m.get("max_steps", 0):
                super().after_report(run_context, metrics, checkpoint)

    return ValLossToTune()


def finished_report(run_dir: Path) -> dict | None:
    """The run's report.json when it completed all its steps (a restored sweep skips it)."""
    try:
        rep = json.loads((run_dir / "report.json").read_text())
    except (OSError, ValueError):
        return None
    return rep if rep.get("finished") else None


def run_trial(config: dict, base: dict, shared: dict, trials_dir: str, reaper=None, storage_env=None) -> None:
    """Tune function trainable. ``config``: the sampled {dotted key: value}; ``shared``:
    data_key -> (Prepared, tokenized datasets) made once on the sweep driver; ``reaper``:
    the sweep's reaper.Reaper (frees the workers' placement group if this trial is stopped);
    ``storage_env``: the driver's AWS_* variables for a trials_dir in a bucket (objstore.env_of),
    used where this node's environment has none."""
    import os
    for k, v in (storage_env or {}).items():
        os.environ.setdefault(k, v)
    from ray import tune

    from ..train.launch import run_training

    trial_id = tune.get_context().get_trial_id()
    # Stable run name = trial id: a restored trial reruns into the same run dir and
    # run_training resumes from its latest checkpoint there.
    cfg = trial_config(base, config, dir=trials_dir, name=trial_id, overwrite=False)
    from ..train.remote import local_run_dir
    run_dir = local_run_dir(cfg)  # trials_dir in a bucket: the run's local staging directory
    # when each attempt of this trial started (a restored sweep adds one): the sweep's
    # concurrency and its resume behaviour can be checked from these
    log = json.loads((run_dir / "trial.json").read_text()) if (run_dir / "trial.json").is_file() else {}
    log = {"trial_id": trial_id, "params": config, "starts": log.get("starts", []) + [time.time()]}
    atomic_write_json(run_dir / "trial.json", log)
    done = finished_report(run_dir)  # finished before an interruption: report it, don't rerun
    if done is None:
        prepared, datasets = shared[data_key(cfg)]
        prepared = dataclasses.replace(prepared, run_dir=run_dir)
        callbacks = [_val_loss_callback()]
        if reaper is not None:
            from .reaper import register_callback
            callbacks.append(register_callback(reaper, trial_id))
        run_training(cfg, prepared=prepared, datasets=datasets, callbacks=callbacks)
        done = finished_report(run_dir)
    if done is None:
        raise RuntimeError(f"trial {trial_id}: run_training returned without a finished report in {run_dir}")
    tune.report({"step": done["steps"], "val_loss": done["val_loss"], "finished": True})
