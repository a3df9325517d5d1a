"""A tiny model trains on tool-calling conversations (both layouts, with broken rows, as a
two-source data.sources mixture), on Ray Train, every assistant turn carrying loss
(data.train_on=all_assistant)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from rayft.config import load
from rayft.train.config import TrainConfig
from rayft.train.launch import run_training

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[1]
CITIES = ["Paris", "Oslo", "Lima", "Cairo", "Tokyo", "Quito", "Rome", "Delhi", "北京", "上海"]
WEATHER = {"name": "get_weather", "description": "current weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def tool_data(d: Path) -> Path:
    rng = random.Random(0)
    share, chat = [], []
    for i in range(48):
        city, t = CITIES[i % len(CITIES)], rng.randint(-10, 35)
        share.append({"conversations": [
            {"from": "human", "value": f"What is the weather in {city}?"},
            {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": city}},
                                                          ensure_ascii=False)},
            {"from": "observation", "value": json.dumps({"temp_c": t})},
            {"from": "gpt", "value": f"It is {t} degrees in {city}."}], "tools": json.dumps([WEATHER])})
        chat.append({"messages": [
            {"role": "user", "content": [{"type": "text", "value": f"Weather for {city}, please."}]},
            {"role": "assistant", "tool_calls": [{"id": f"c{i}", "type": "function", "function": {
                "name": "get_weather", "arguments": json.dumps({"city": city}, ensure_ascii=False)}}]},
            {"role": "tool", "tool_call_id": f"c{i}", "content": json.dumps({"temp_c": t})},
            {"role": "assistant", "content": f"{city}: {t} degrees."}], "tools": [{"type": "function", "function": WEATHER}]})
    share.insert(5, {"conversations": [{"from": "human", "value": "x"}, {"from": "function_call", "value": "{oops"}]})
    chat.insert(7, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                                 {"role": "assistant", "content": "a cat"}]})
    (d / "sharegpt.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in share))
    (d / "openai.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chat))
    return d


def test_tiny_model_trains_on_tool_calls(ray_session, tmp_path):
    data = tool_data(tmp_path)
    sources = [{"path": str(data / "sharegpt.jsonl"), "name": "sg"},
               {"path": str(data / "openai.jsonl"), "format": "openai", "max_rows": 30, "name": "oa"}]
    c = load(TrainConfig, REPO / "configs/tiny.yaml",
             [f"run.dir={tmp_path / 'runs'}", "run.name=tools", "data.path=", "data.sources=" + json.dumps(sources),
              "generate.prompt=",
              "data.train_on=all_assistant", "data.max_seq_len=512", "train.max_steps=6",
              "train.checkpoint_every=6", "train.log_every=2", "train.lr=0.01"])
    run_dir = Path(run_training(c))
    rep = json.loads((run_dir / "report.json").read_text())
    assert rep["rows_read"] == 98 and rep["rows_rejected"] == 2
    # per source: rows read = kept + rejected; used = what the mixture takes (max_rows=30)
    assert [(s["name"], s["read"], s["kept"], s["rejected"], s["used"]) for s in rep["sources"]] == [
        ("sg", 49, 48, 1, 48), ("oa", 49, 48, 1, 30)]
    assert rep["train_rows"] + rep["val_rows"] == rep["rows_kept"] == 78
    assert rep["steps"] == 6 and rep["finished"] and rep["loss_last"] < rep["loss_first"]
    reasons = [json.loads(x)["reason"] for x in (run_dir / "rejects.jsonl").read_text().splitlines()]
    assert any("function_call is not valid JSON" in r for r in reasons)
    assert any("'image_url' content parts are not supported" in r for r in reasons)
