"""`rayft eval` end to end on the session Ray: Ray Data scoring, gate, eval.json, registry.

One real `rayft train` run (tiny model, 1 worker) is the improving candidate; the
diverged (NaN) and no-op (identity adapter) candidates are built directly.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rayft.config import ConfigError, load
from rayft.evaluate.config import EvalConfig
from rayft.cli import main
from rayft.evaluate.run import run_eval
from rayft.testing.runs import make_run
from rayft.registry import Registry

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

SAMPLES = "src/rayft/assets/samples/subtitle_pairs.jsonl"
REPO = Path(__file__).resolve().parents[1]
EVAL_YAML = REPO / "configs" / "eval.yaml"


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory):
    """A real, finished `rayft train` LoRA run on the tiny model (Ray Train, 1 worker)."""
    from rayft.train.config import TrainConfig
    from rayft.train.launch import run_training

    d = tmp_path_factory.mktemp("train")
    cfg = load(TrainConfig, REPO / "configs/tiny.yaml", [
        f"run.dir={d}", "run.name=cand", f"data.path={REPO / SAMPLES}", "train.max_steps=8",
        "train.checkpoint_every=8", "scaling.num_workers=1", "generate.prompt=", "data.max_seq_len=128"])
    return run_training(cfg)


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    """24 of the training pairs as the golden set: a real fit must lower their loss."""
    p = tmp_path_factory.mktemp("golden") / "golden.jsonl"
    p.write_text("".join((REPO / SAMPLES).read_text(encoding="utf-8").splitlines(keepends=True)[:24]),
                 encoding="utf-8")
    return p


def _overrides(candidate, golden, reg, *extra) -> list[str]:
    return [f"candidate={candidate}", f"data.golden={golden}", f"registry.uri={reg}", "data.max_rows=12",
            "score.max_new_tokens=8", "gate.golden_metric=loss", "data.max_seq_len=128", *extra]


def _cfg(candidate, golden, reg, *extra):
    return load(EvalConfig, EVAL_YAML, _overrides(candidate, golden, reg, *extra))


def test_trained_candidate_beats_base_is_registered_and_promoted(trained, golden, tmp_path):
    reg_dir = tmp_path / "reg"
    out = run_eval(_cfg(trained, golden, reg_dir))
    ev = json.loads(open(out).read())
    m = ev["metrics"]
    assert ev["champion"] == "base:tiny-qwen2" and ev["champion_version"] is None
    assert ev["decision"] == "promote", ev["reasons"]
    assert m["candidate"]["golden"]["loss"] < 0.99 * m["champion"]["golden"]["loss"]
    assert m["candidate"]["val"]["rows"] > 0 and m["candidate"]["val"]["tokens"] > 0  # run's own val split
    for who in ("candidate", "champion"):
        for split in ("val", "golden"):
            s = m[who][split]
            assert s["perplexity"] == pytest.approx(math.exp(s["loss"]))
            assert -1.0 <= s["similarity"] <= 1.0  # MiniLM cosine of generated vs reference
    assert ev["score"]["embed_model"] == "all-MiniLM-L6-v2" and len(ev["samples"]) == 3
    assert [r.split(":")[0] for r in ev["reasons"]] == ["PASS finite", "PASS golden", "PASS val"]
    reg = Registry(str(reg_dir))
    assert ev["registered"] and ev["promoted"] and reg.aliases()["champion"] == ev["registered"]
    man = reg.get("champion")
    assert man["eval"]["decision"] == "promote" and man["score"]["metric"] == "golden.loss"
    assert man["data"]["hash"] and man["command"]["train"]

    # the same run again, now against the registry champion (itself): no 1 % gain -> reject
    ev2 = json.loads(open(run_eval(_cfg(trained, golden, reg_dir, "score.similarity=chrf",
                                        f"output={tmp_path / 'again.json'}"))).read())
    assert ev2["champion_version"] == ev["registered"]
    assert ev2["decision"] == "reject" and any(r.startswith("FAIL golden") and "+0.00%" in r
                                               for r in ev2["reasons"])
    assert 0.0 <= ev2["metrics"]["candidate"]["golden"]["similarity"] <= 1.0  # chrF
    assert ev2["registered"] is None and reg.aliases()["champion"] == ev["registered"]


def test_nan_and_noop_candidates_are_rejected_with_reasons(ray_session, golden, tmp_path, capsys):
    reg_dir = tmp_path / "reg"
    nan_run = make_run(tmp_path / "nan", nan=True)
    ev = json.loads(open(run_eval(_cfg(nan_run, golden, reg_dir, f"data.val={golden}",
                                       "score.similarity=rougeL"))).read())
    assert ev["decision"] == "reject" and not ev["accept"]
    assert ev["reasons"][0].startswith("FAIL finite") and "candidate.golden.loss=nan" in ev["reasons"][0]
    assert ev["registered"] is None and not (reg_dir / "default").exists()

    noop = make_run(tmp_path / "noop")  # identity adapter == the base model: through the CLI
    rc = main(["eval", "--config", str(EVAL_YAML), *_overrides(noop, golden, reg_dir, f"data.val={golden}",
                                                               "score.generate=false", "registry.promote=false")])
    out, err = capsys.readouterr()
    assert rc == 3  # `rayft eval && promote` stops on a rejection; eval.json is still written and printed
    assert "gate rejected the candidate (FAIL golden" in err
    assert "\r" not in err and "[rayft] eval score " in err  # progress as plain lines off a terminal
    ev = json.loads(open(out.strip().splitlines()[-1]).read())
    assert ev["decision"] == "reject"
    assert ev["reasons"][0].startswith("PASS finite")
    assert ev["reasons"][1].startswith("FAIL golden") and "+0.00%; must improve by >= 1.00%" in ev["reasons"][1]
    assert ev["metrics"]["candidate"]["golden"]["similarity"] is None


def test_eval_config_errors_are_clear(tmp_path, golden):
    with pytest.raises(ConfigError, match="data.golden"):
        load(EvalConfig, None, ["candidate=x"])
    with pytest.raises(ConfigError, match="no report.json"):
        run_eval(load(EvalConfig, None, [f"candidate={tmp_path}", f"data.golden={golden}"]))
    run = make_run(tmp_path / "r")
    with pytest.raises(ConfigError, match="registry.uri is empty"):
        run_eval(load(EvalConfig, None, [f"candidate={run}", f"data.golden={golden}", "champion=previous"]))
    with pytest.raises(ConfigError, match="alias 'previous' is not set"):
        run_eval(load(EvalConfig, None, [f"candidate={run}", f"data.golden={golden}", "champion=previous",
                                         f"registry.uri={tmp_path / 'reg'}"]))
    with pytest.raises(ConfigError, match="data.golden"):
        run_eval(load(EvalConfig, None, [f"candidate={run}", f"data.golden={tmp_path / 'missing.jsonl'}"]))
