"""configs/curate.yaml loads; bad keys/values fail with a clear ConfigError; ledger GC/commit (pure)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rayft.cli import STAGES, main
from rayft.config import ConfigError, from_dict, load, to_dict
from rayft.curate.config import CurateConfig
from rayft.curate.ledger import Ledger, lock
from rayft.data.formats import DataError

ALIASES = STAGES["curate"][3]


def test_curate_yaml_loads_and_round_trips(repo):
    cfg = load(CurateConfig, repo / "configs" / "curate.yaml", ["input=data/x", "output=/tmp/out"], ALIASES)
    assert cfg.data.path == "data/x" and cfg.output.dir == "/tmp/out"
    assert cfg.dedup.threshold == 0.8 and cfg.secrets.password == "drop" and cfg.secrets.phone == "mask"
    assert from_dict(CurateConfig, to_dict(cfg)) == cfg
    # the shipped file runs as is (bundled samples -> runs/curated)
    assert load(CurateConfig, repo / "configs" / "curate.yaml").data.path == "src/rayft/assets/samples"


@pytest.mark.parametrize("override,msg", [
    (["dedup.thresold=0.5"], "unknown config key 'dedup.thresold'"),
    (["secrets.card=hide"], "secrets.card: expected one of ['drop', 'mask', 'off']"),
    (["dedup.threshold=1.5"], "dedup.threshold"),
    (["split.val_fraction=0.6", "split.golden_fraction=0.5"], "must be < 1"),
    (["dedup.fields=[prompt,answer]"], "dedup.fields"),
    (["secrets.mask_format=XXX"], "mask_format"),
    (["output.dir="], "output.dir is required"),
])
def test_bad_config_is_a_clear_error(repo, override, msg):
    with pytest.raises(ConfigError, match=None) as e:
        load(CurateConfig, repo / "configs" / "curate.yaml", override, ALIASES)
    assert msg in str(e.value)


def test_cli_print_config_and_missing_input(repo, capsys):
    assert main(["curate", "--config", str(repo / "configs" / "curate.yaml"), "--print-config", "input=a/b"]) == 0
    assert "path: a/b" in capsys.readouterr().out
    assert main(["curate", "output=/tmp/x"]) == 2
    assert "data.path is required" in capsys.readouterr().err


def test_ledger_gc_removes_only_uncommitted_run_files(tmp_path):
    led = Ledger(tmp_path)
    files = ["en/train/part-r0001-00000.parquet", "rejects/r0001.low_value.jsonl", "_ledger/accepted-r0001.arrow",
             "reports/r0001.json", "en/train/part-r0002-00000.parquet", "rejects/r0002.secrets.jsonl",
             "_ledger/accepted-r0002.arrow", "reports/r0002.json", "_staging/r0002/en/val/part-r0002-00000.parquet",
             "notes.txt", "report.json"]
    for f in files:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("x")
    for run in ("r0001", "r0002"):
        (tmp_path / "reports" / f"{run}.json").write_text(json.dumps({"run": run}))
    # killed after publishing r0002 and before its ledger commit: report.json describes r0002
    (tmp_path / "report.json").write_text(json.dumps({"run": "r0002"}))
    led.commit("r0001", {"abc": {"path": "a.jsonl"}}, {"rows_in": 1})
    assert Ledger(tmp_path).committed() == {"r0001"} and Ledger(tmp_path).has_file("abc")
    removed = Ledger(tmp_path).gc()
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == sorted(["en/train/part-r0001-00000.parquet", "rejects/r0001.low_value.jsonl",
                           "_ledger/accepted-r0001.arrow", "reports/r0001.json", "notes.txt", "report.json",
                           "_ledger/ledger.json"])
    assert len(removed) == 6 and Ledger(tmp_path).next_run_id() == "r0002"
    assert json.loads((tmp_path / "report.json").read_text()) == {"run": "r0001"}  # the last committed run's
    assert Ledger(tmp_path).gc() == []  # nothing stale left
    # no committed run at all: a stale report.json is removed
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "report.json").write_text(json.dumps({"run": "r0001"}))
    assert Ledger(fresh).gc() == [str(fresh / "report.json")] and not (fresh / "report.json").exists()


def test_ledger_publish_moves_staging_into_place(tmp_path):
    led = Ledger(tmp_path)
    st = led.staging("r0001")
    (st / "zh" / "train").mkdir(parents=True)
    (st / "zh" / "train" / "part-r0001-00000.parquet").write_text("p")
    (st / "report.json").write_text("{}")
    assert sorted(led.publish("r0001")) == ["report.json", os.path.join("zh", "train", "part-r0001-00000.parquet")]
    assert (tmp_path / "zh/train/part-r0001-00000.parquet").read_text() == "p" and not (tmp_path / "_staging").exists()


def test_one_run_per_output_dir(tmp_path):
    with lock(tmp_path):
        with pytest.raises(DataError, match="another curate run"):
            with lock(tmp_path):
                pass
    with lock(tmp_path):  # released
        pass
    assert json.loads(json.dumps(Ledger(Path(tmp_path)).state))["runs"] == []
