"""DeepSpeed config: the pure TrainConfig -> dict function (snapshots), the user-JSON override
and every refusal that must happen before Ray starts. No Ray, no workers."""
from __future__ import annotations

import json
import re
import os
import sys
from pathlib import Path

import pytest

from rayft.cli import main
from rayft.config import ConfigError, load
from rayft.train import deepspeed as dsc
from rayft.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
SNAP = REPO / "tests" / "snapshots"
SAMPLES = REPO / "src/rayft/assets/samples/subtitle_pairs.jsonl"


def cfg(*overrides: str) -> TrainConfig:
    return load(TrainConfig, REPO / "configs/tiny.yaml", [f"data.path={SAMPLES}", *overrides])


def _snapshot(name: str, got: dict) -> None:
    """Compare with tests/snapshots/<name>.json. A missing snapshot fails; RAYFT_UPDATE_SNAPSHOTS=1
    (re)writes it - then review the diff and commit it."""
    path = SNAP / f"{name}.json"
    if os.environ.get("RAYFT_UPDATE_SNAPSHOTS") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    assert path.exists(), f"{path} missing; write it with RAYFT_UPDATE_SNAPSHOTS=1, review and commit it"
    assert got == json.loads(path.read_text()), f"{name} changed; if intended rerun with RAYFT_UPDATE_SNAPSHOTS=1"


def test_missing_snapshot_fails(monkeypatch, tmp_path):
    """The check itself: no snapshot on disk is a failure, not a freshly written pass."""
    monkeypatch.setattr(sys.modules[__name__], "SNAP", tmp_path)
    monkeypatch.delenv("RAYFT_UPDATE_SNAPSHOTS", raising=False)
    with pytest.raises(AssertionError, match="missing"):
        _snapshot("deepspeed_nothing", {"a": 1})
    assert not (tmp_path / "deepspeed_nothing.json").exists()
    monkeypatch.setenv("RAYFT_UPDATE_SNAPSHOTS", "1")
    _snapshot("deepspeed_nothing", {"a": 1})  # the explicit regenerate path writes it
    monkeypatch.delenv("RAYFT_UPDATE_SNAPSHOTS")
    with pytest.raises(AssertionError, match="changed"):
        _snapshot("deepspeed_nothing", {"a": 2})


@pytest.mark.parametrize("name,overrides,world,dtype", [
    ("zero2_cpu", ["train.strategy=zero2"], 2, "float32"),
    ("zero3_cpu", ["train.strategy=zero3", "train.grad_accum=4"], 4, "float32"),
    ("zero3_nvme_cpu", ["train.strategy=zero3", "train.offload_optimizer=nvme", "train.offload_params=nvme"],
     4, "float32"),
    ("zero2_offload_gpu", ["train.strategy=zero2", "train.offload_optimizer=cpu", "scaling.use_gpu=true"],
     8, "bfloat16"),
])
def test_generated_config_snapshot(name, overrides, world, dtype):
    c = cfg(*overrides)
    got = dsc.ds_config(c, world, dtype, "/scratch/nvme")
    _snapshot(f"deepspeed_{name}", got)
    z = got["zero_optimization"]
    assert got["train_batch_size"] == c.train.batch_size * c.train.grad_accum * world
    if not c.scaling.use_gpu:  # CPU workers: small buckets, no overlap buffers
        assert z["reduce_bucket_size"] <= 5e6 and z["overlap_comm"] is False
        assert "bf16" not in got and "fp16" not in got
    dsc.validate_with_deepspeed(got)  # DeepSpeed's own parser accepts what we generate


def test_ddp_has_no_deepspeed_config():
    with pytest.raises(ValueError):
        dsc.ds_config(cfg(), 2, "float32")


def test_known_keys_match_installed_deepspeed():
    """Re-record which top-level keys DeepSpeedConfig reads; fails on a DeepSpeed upgrade that changes them."""
    from deepspeed.runtime.config import DeepSpeedConfig

    seen: set[str] = set()

    class Keys:
        def __init__(self, d):
            self.d = d

        def __contains__(self, k):
            seen.add(k)
            return k in self.d

        def __iter__(self):
            return iter(self.d)

    class Recording(dict):
        def get(self, k, d=None):
            seen.add(k)
            return super().get(k, d)

        def __getitem__(self, k):
            seen.add(k)
            return super().__getitem__(k)

        def __contains__(self, k):
            seen.add(k)
            return super().__contains__(k)

        def keys(self):
            return Keys(dict(self))

    DeepSpeedConfig(Recording({"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                               "zero_optimization": {"stage": 3}}))
    assert seen == dsc.KNOWN_TOP_LEVEL


def test_user_json_merges_and_is_checked(tmp_path):
    good = tmp_path / "ds.json"
    good.write_text(json.dumps({"zero_optimization": {"reduce_bucket_size": 1234567}, "wall_clock_breakdown": True}))
    c = cfg("train.strategy=zero3", f"train.deepspeed_config={good}")
    user = dsc.read_user_json(c.train.deepspeed_config)
    final = dsc.final_config(c, 2, "float32", "nvme", user)
    assert final["zero_optimization"]["reduce_bucket_size"] == 1234567
    assert final["zero_optimization"]["stage"] == 3  # the rest of the section survives the merge
    assert final["wall_clock_breakdown"] is True
    cases = [({"zero_optimisation": {"stage": 3}}, "unknown DeepSpeed key(s) ['zero_optimisation']"),
             ({"train_batch_size": 64}, "set by rayft"),
             ({"optimizer": {"type": "Adam"}}, "rayft builds AdamW"),
             ([1, 2], "must hold a JSON object")]
    for data, msg in cases:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(data))
        with pytest.raises(ConfigError, match=re.escape(msg)):
            dsc.read_user_json(str(bad))
    nested = dsc.final_config(c, 2, "float32", "nvme", {"zero_optimization": {"stage3_bogus_knob": 1}})
    with pytest.raises(ConfigError, match="DeepSpeed refused the config.*stage3_bogus_knob"):
        dsc.validate_with_deepspeed(nested)


def _cli(tmp_path, capsys, *overrides: str) -> str:
    rc = main(["train", "--config", str(REPO / "configs/tiny.yaml"), f"run.dir={tmp_path}", "run.name=refused",
               f"data.path={SAMPLES}", *overrides])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert not (tmp_path / "refused").exists()  # refused before the run directory, Ray or any worker
    return err


def test_bad_input_refused_before_launch(tmp_path, capsys):
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"zero_optimization": {"stage": 3}, "gradient_clipin": 1.0}))
    assert "unknown DeepSpeed key(s) ['gradient_clipin']" in _cli(
        tmp_path, capsys, "train.strategy=zero3", f"train.deepspeed_config={bad}")
    assert "file not found" in _cli(tmp_path, capsys, "train.strategy=zero2",
                                    f"train.deepspeed_config={tmp_path / 'nope.json'}")
    # strategies / precisions the device cannot run
    assert "no fp16 support" in _cli(tmp_path, capsys, "train.strategy=zero2", "model.dtype=float16")
    assert "needs train.strategy=zero3" in _cli(tmp_path, capsys, "train.strategy=zero2",
                                                "train.offload_optimizer=nvme")
    assert "need a DeepSpeed strategy" in _cli(tmp_path, capsys, "train.offload_optimizer=cpu")
    assert "needs train.strategy=zero3" in _cli(tmp_path, capsys, "train.strategy=zero2",
                                                "train.offload_params=nvme")
    assert "train.strategy: expected one of" in _cli(tmp_path, capsys, "train.strategy=zero1")
