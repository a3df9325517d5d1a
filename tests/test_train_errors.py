"""One-line errors (issue 17 item 13) for what a run leaves behind: a corrupt checkpoint
state.json, a training run that failed on its workers, a serve registry path that does not
exist. Pure: no Ray."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayft.config import ConfigError, from_dict
from rayft.train.checkpoint import read_state
from rayft.train.config import TrainConfig
from rayft.train.datasets import Prepared
from rayft.train.launch import TrainingFailed, training_failed


@pytest.mark.parametrize("text", ["{not json", "", "[1, 2]", '{"step": "three"}', "\udcff"])
def test_corrupt_checkpoint_state_is_one_line(tmp_path: Path, text: str):
    ck = tmp_path / "checkpoints" / "step_0000004"
    ck.mkdir(parents=True)
    (ck / "state.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ConfigError) as e:
        read_state(ck)
    msg = str(e.value)
    assert "\n" not in msg and str(ck / "state.json") in msg and "corrupt checkpoint state" in msg


def test_good_checkpoint_state_reads(tmp_path: Path):
    (tmp_path / "state.json").write_text(json.dumps({"step": 7, "world_size": 2}))
    assert read_state(tmp_path)["step"] == 7


def test_failed_training_run_reports_cause_and_logs(tmp_path: Path):
    cfg = from_dict(TrainConfig, {"run": {"dir": str(tmp_path), "name": "r"}, "data": {"path": "pairs.jsonl"}})
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    p = Prepared(run_dir, "tiny", None, None, None, {})
    err = RuntimeError("Training failed due to worker errors:\n  File \"/x/loop.py\", line 3\n"
                       "ValueError: worker 1 has 0 training rows\n")
    out = training_failed(cfg, p, err, 12.5, 0)
    assert isinstance(out, TrainingFailed) and isinstance(out, ConfigError)  # the CLI prints one line, exit 2
    msg = str(out)
    assert "\n" not in msg and "ValueError: worker 1 has 0 training rows" in msg
    assert str(run_dir / "report.json") in msg
    report = json.loads((run_dir / "report.json").read_text())
    assert report["finished"] is False and report["failed"] is True
    assert report["error"] == "ValueError: worker 1 has 0 training rows"
    assert report["logs"]["metrics"] == str(run_dir / "metrics.jsonl")


def test_serve_missing_registry_is_not_no_champion(tmp_path: Path):
    from rayft.serve.app import build_app
    from rayft.serve.config import ServeConfig

    cfg = from_dict(ServeConfig, {"registry": str(tmp_path / "no-such-registry"), "models": ["en"]})
    with pytest.raises(ConfigError) as e:
        build_app(cfg)
    assert "no such registry" in str(e.value) and "no champion" not in str(e.value)
