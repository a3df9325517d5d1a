"""data.sources: per-source column mapping and weights/max_rows, deterministic by seed;
rows read = kept + rejected per source."""
from __future__ import annotations

import json

import pytest

from rayft.data.formats import DataError
from rayft.data.mixture import check_mixture, check_sources, read_mixture
from test_data_toolcalls import _jsonl, openai_rows


@pytest.fixture
def sources(tmp_path):
    qa = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(40)] + [{"question": "", "answer": "x"}]
    _jsonl(tmp_path / "qa.jsonl", qa)
    _jsonl(tmp_path / "chat.jsonl", openai_rows())
    return [{"path": str(tmp_path / "qa.jsonl"), "columns": {"prompt": "question", "response": "answer"},
             "weight": 0.5, "name": "qa"},
            {"path": str(tmp_path / "chat.jsonl"), "format": "openai", "weight": 2, "name": "chat"}]


def test_two_source_mixture(sources):
    res = read_mixture(sources, seed=1)
    by = {s["name"]: s for s in res.sources}
    assert by["qa"]["read"] == 41 == by["qa"]["kept"] + by["qa"]["rejected"] and by["qa"]["rejected"] == 1
    assert by["chat"]["read"] == 11 == by["chat"]["kept"] + by["chat"]["rejected"] and by["chat"]["kept"] == 3
    assert by["qa"]["used"] == 20 and by["chat"]["used"] == 6
    assert res.rows_read == 52 and len(res.rejects) == 1 + 8
    assert all(r["source"] in ("qa", "chat") for r in res.rows + res.rejects)
    qa = [r for r in res.rows if r["source"] == "qa"]
    assert all(r["prompt"].startswith("q") and r["response"].startswith("a") for r in qa)  # columns mapped
    # deterministic by seed, and the seed matters
    assert [r["prompt"] for r in read_mixture(sources, seed=1).rows] == [r["prompt"] for r in res.rows]
    assert [r["prompt"] for r in read_mixture(sources, seed=2).rows] != [r["prompt"] for r in res.rows]
    capped = read_mixture([dict(sources[0], weight=None, max_rows=7), sources[1]], seed=1)
    assert capped.sources[0]["used"] == 7 and len({r["prompt"] for r in capped.rows if r["source"] == "qa"}) == 7


def test_sources_validation(sources, tmp_path):
    with pytest.raises(DataError, match=r"data.sources\[0\]: give weight or max_rows"):
        check_sources([dict(sources[0], max_rows=3)])
    with pytest.raises(DataError, match=r"data.sources\[1\].weight"):
        check_sources([sources[0], dict(sources[1], weight=-1)])
    with pytest.raises(DataError, match=r"unknown field 'question'"):
        check_sources([dict(sources[0], columns={"question": "prompt"})])
    with pytest.raises(DataError, match=r"unknown key 'wieght'"):
        check_sources([{"path": "x", "wieght": 2}])
    with pytest.raises(DataError, match="file not found"):
        check_mixture([{"path": str(tmp_path / "nope.jsonl")}])
    # without the mapping the qa file has no valid row: refused before any reading
    with pytest.raises(DataError, match="no valid rows"):
        check_mixture([dict(sources[0], columns=None)])
    assert [s["name"] for s in check_mixture(sources)] == ["qa", "chat"]
    assert json.dumps(check_sources(["a.jsonl"])[0]["columns"]) == "{}"


def test_train_prepare_reads_a_mixture(sources, tmp_path):
    """`rayft train` with data.sources (given as a key=value override): the driver-side data
    phase reads each source, weights it and reports it per source (no Ray: in-process read)."""
    from pathlib import Path

    from rayft.config import ConfigError, load
    from rayft.data.formats import read_pairs
    from rayft.train.config import TrainConfig
    from rayft.train.datasets import check_inputs, prepare

    repo = Path(__file__).resolve().parents[1]
    over = [f"run.dir={tmp_path}", "data.path=", "data.sources=" + json.dumps(sources), "data.train_on=all_assistant"]
    cfg = load(TrainConfig, repo / "configs/tiny.yaml", over)
    assert cfg.data.sources[0]["columns"] == {"prompt": "question", "response": "answer"}
    check_inputs(cfg)
    p = prepare(cfg, read=read_pairs, source="tiny-qwen2")
    assert [(s["name"], s["read"], s["kept"], s["rejected"], s["used"]) for s in p.stats["sources"]] == [
        ("qa", 41, 40, 1, 20), ("chat", 11, 3, 8, 6)]
    assert p.stats["train_rows"] + p.stats["val_rows"] == 26 and p.stats["rows_read"] == 52
    assert p.train_table.num_rows == p.stats["train_rows"] and "messages" in p.train_table.column_names
    with pytest.raises(ConfigError, match="give one"):
        load(TrainConfig, repo / "configs/tiny.yaml", over[:1] + over[2:3])
