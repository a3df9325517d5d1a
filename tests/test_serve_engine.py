"""Serving pieces without Ray: OpenAI request parsing, model-id routing, the adapter engine."""
from __future__ import annotations

import json

import pytest

from rayft.config import ConfigError, load
from rayft.evaluate.synth import make_run
from rayft.registry import Registry
from rayft.serve import openai_api as oa
from rayft.serve.config import ServeConfig
from rayft.serve.engine import Engine, EngineError
from rayft.serve.routing import Router


def _ev(champion=None):
    return {"decision": "promote", "champion_version": champion, "gate": {"golden_metric": "loss"},
            "metrics": {"candidate": {"golden": {"loss": 1.0}}}}


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve_pure")
    en, zh = Registry(str(d / "reg"), "en"), Registry(str(d / "reg"), "zh")
    v1 = en.register(make_run(d / "en1", noise=0.5, lora_seed=1), _ev())["version"]
    en.promote(v1)
    v2 = en.register(make_run(d / "en2", noise=0.5, lora_seed=2), _ev(v1))["version"]
    z1 = zh.register(make_run(d / "zh1", noise=0.5, lora_seed=3, system_prompt="你是助手"), _ev())["version"]
    zh.promote(z1)
    full = en.register(make_run(d / "full", full=True, seed=5), _ev())["version"]
    return {"uri": str(d / "reg"), "en": en, "zh": zh, "v1": v1, "v2": v2, "z1": z1, "full": full}


def test_parse_requests():
    body = oa.parse_body(b'{"model": "en", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}')
    req = oa.parse_chat(body, 16, 64)
    assert req["messages"] == [{"role": "user", "content": "hi"}]
    assert (req["max_tokens"], req["temperature"], req["stop"], req["stream"]) == (16, 0.0, [], False)
    assert oa.parse_completion({"model": "m", "prompt": ["x"], "stop": "\n"}, 8, 8)["stop"] == ["\n"]
    for raw, msg in ((b"{bad", "not valid JSON"), (b"[1]", "JSON object"), (b"x" * (oa.MAX_BODY + 1), "larger")):
        with pytest.raises(oa.ApiError, match=msg):
            oa.parse_body(raw)
    bad = [({"messages": [{"role": "user", "content": "x"}]}, "'model' is required"),
           ({"model": "m"}, "'messages' must be"),
           ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "role must be"),
           ({"model": "m", "messages": [{"role": "assistant", "content": "x"}]}, "last message"),
           ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n=1"),
           ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10_000}, "between"),
           ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "number"),
           ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": [1]}, "'stop'")]
    for body, msg in bad:
        with pytest.raises(oa.ApiError, match=msg) as e:
            oa.parse_chat(body, 16, 64)
        assert e.value.status == 400 and e.value.body()["error"]["type"] == "invalid_request_error"
    with pytest.raises(oa.ApiError, match="'prompt' must be a string"):
        oa.parse_completion({"model": "m", "prompt": ["a", "b"]}, 8, 8)
    out = {"text": "hey", "finish_reason": "stop", "prompt_tokens": 3, "completion_tokens": 2}
    r = oa.response(req, out, "en:v1")
    assert r["object"] == "chat.completion" and r["usage"]["total_tokens"] == 5
    ev = oa.sse_events(req, out, "en:v1")
    assert ev[-1] == "data: [DONE]\n\n" and json.loads(ev[0][6:])["choices"][0]["delta"]["content"] == "hey"


def test_serve_config_refuses_open_bind_without_key(monkeypatch):
    monkeypatch.delenv("RAYFT_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="requires|exposes"):
        load(ServeConfig, None, ["host=0.0.0.0"]).check_bind()
    monkeypatch.setenv("RAYFT_API_KEY", "k")
    load(ServeConfig, None, ["host=0.0.0.0"]).check_bind()
    with pytest.raises(ConfigError, match="not in models"):
        load(ServeConfig, None, ["models=[en]", "languages={zh: zh}"])


def test_router_forms_and_hot_swap(reg):
    r = Router(reg["uri"], ["en", "zh"], {"en": "en", "zh": "zh"}, "en", refresh_s=0.0)
    assert r.resolve("en", "x") == ("en", reg["v1"])
    assert r.resolve("auto", "侦探打开了信") == ("zh", reg["z1"])
    assert r.resolve("auto", "hello") == ("en", reg["v1"])
    assert r.resolve("champion", "你好") == ("zh", reg["z1"])
    assert r.resolve(f"en:{reg['v2']}", "") == ("en", reg["v2"])
    assert r.resolve(reg["z1"], "") == ("zh", reg["z1"])
    for bad in ("fr", "en:v1234567890_abcd", "v1234567890_abcd", "en:latest", "en:previous"):
        with pytest.raises(oa.ApiError) as e:
            r.resolve(bad, "hi")
        assert e.value.status == 404, bad
    reg["en"].promote(reg["v2"])
    try:
        assert r.pending() == {"en": reg["v2"]}
        assert r.resolve("en", "") == ("en", reg["v1"])  # old champion until the new one is loaded
        r.mark_ready("en", reg["v2"])
        assert r.resolve("en", "") == ("en", reg["v2"]) and r.resolve("en:previous", "") == ("en", reg["v1"])
        assert r.pending() == {}
    finally:
        reg["en"].rollback()
    assert r.pending() == {"en": reg["v1"]}


def test_engine_multiplexes_adapters_exactly(reg):
    """Adapters attached side by side on one base answer exactly like each alone."""
    from rayft.models.spec import base_spec, load_spec, manifest_spec

    eng = Engine(base_spec("tiny-qwen2", 0), threads=1)
    req = {"kind": "chat", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 12,
           "temperature": 0.0, "top_p": 1.0, "stop": [], "seed": None}
    handles, texts = {}, {}
    for key, line in (("v1", "en"), ("v2", "en"), ("z1", "zh"), ("full", "en")):
        m, local = reg[line].fetch(reg[key])
        handles[key] = eng.load(f"{line}/{reg[key]}", m, local)
        texts[key] = eng.generate(handles[key], req)["text"]
    assert len(set(texts.values())) == 4  # every version answers differently
    for key, line in (("v1", "en"), ("z1", "zh")):  # reference: the adapter loaded alone
        import torch

        from rayft.data.tokenize import prompt_text
        m, local = reg[line].fetch(reg[key])
        model, tok = load_spec(manifest_spec(m, local, key))
        text = prompt_text(tok, m["system_prompt"], "", "hello there")
        enc = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)
        assert texts[key] == tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True), key
    # eviction: the handle's __del__ only queues; the next locked section unloads it
    name = handles["v2"].adapter
    handles["v2"].__del__()
    assert name in eng.peft.peft_config
    eng.generate(handles["v1"], req)
    assert name not in eng.peft.peft_config
    # a request still holding the evicted handle re-attaches it and gets the same answer
    assert eng.generate(handles["v2"], req)["text"] == texts["v2"]
    stopped = eng.generate(handles["v1"], {**req, "stop": [texts["v1"][2:4]]}) if len(texts["v1"]) > 3 else None
    if stopped:
        assert stopped["finish_reason"] == "stop" and len(stopped["text"]) <= 2
    m, local = reg["en"].fetch(reg["v1"])
    with pytest.raises(EngineError, match="this replica hosts"):
        Engine(base_spec("tiny-llama", 0)).load("en/x", m, local)


def test_shipped_configs_load():
    from pathlib import Path

    from rayft.evaluate.config import EvalConfig

    root = Path(__file__).resolve().parents[1] / "configs"
    s = load(ServeConfig, root / "serve.yaml")
    assert (s.host, s.models, s.languages) == ("127.0.0.1", ["default"], {})
    w1 = load(ServeConfig, root / "serve.yaml", ["models=[en, zh]", "languages={en: en, zh: zh}"])
    assert w1.languages == {"en": "en", "zh": "zh"}
    e = load(EvalConfig, root / "eval.yaml")
    assert e.gate.min_golden_improvement == 0.01 and e.score.similarity == "embedding"
