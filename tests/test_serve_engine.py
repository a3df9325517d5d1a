"""Serving pieces without Ray: OpenAI request parsing, model-id routing, the adapter engine."""
from __future__ import annotations

import json

import pytest

from rayft.config import ConfigError, load
from rayft.testing.runs import make_run
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


# -- hardening (issue 17) ----------------------------------------------------------------------
CHAT1 = [{"role": "user", "content": "x"}]


def test_hostile_bodies_are_400_with_openai_error():
    """NaN/Infinity, huge numbers, thousand-digit integers, deep nesting, lone surrogates: 400s."""
    head = b'{"model": "m", "messages": [{"role": "user", "content": "x"}], '
    cases = {"n NaN": head + b'"n": NaN}', "max_tokens Infinity": head + b'"max_tokens": Infinity}',
             "max_tokens -Infinity": head + b'"max_tokens": -Infinity}', "1e400": head + b'"n": 1e400}',
             "4000 digits": head + b'"max_tokens": ' + b"9" * 4000 + b"}",
             "seed 2**70": head + b'"seed": ' + str(2**70).encode() + b"}",
             "nested 100k": b'{"model": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
             "nested 40": b'{"model": "m", "x": ' + b"[" * 40 + b"]" * 40 + b"}",
             "lone surrogate": b'{"model": "m", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
             "surrogate key": b'{"model": "m", "\\udfff": 1, "messages": [{"role": "user", "content": "x"}]}',
             "invalid utf-8": head[:-2] + b'"\xff\xfe"}'}
    for name, raw in cases.items():
        with pytest.raises(oa.ApiError) as e:
            oa.parse_chat(oa.parse_body(raw), 16, 64)
        assert e.value.status == 400, name
        err = e.value.body()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error", name
    ok = oa.parse_chat({"model": "m", "messages": CHAT1, "seed": 2**63, "n": 1.0, "max_tokens": 5.0}, 16, 64)
    assert ok["seed"] == 2**63 and ok["max_tokens"] == 5 and isinstance(ok["max_tokens"], int)
    for bad in (float("nan"), float("inf"), 2**64):  # the same values arriving as Python objects
        with pytest.raises(oa.ApiError):
            oa.parse_chat({"model": "m", "messages": CHAT1, "max_tokens": bad, "seed": bad}, 16, 64)
    busy = oa.ApiError(503, "busy", "server_busy", retry_after=3)
    assert busy.headers() == {"Retry-After": "3"} and oa.ApiError(401, "k").headers() == {"WWW-Authenticate": "Bearer"}
    # a vanishing temperature is greedy, not logits / 1e-40 = inf -> NaN probabilities
    assert oa.parse_chat({"model": "m", "messages": CHAT1, "temperature": 1e-40}, 16, 64)["temperature"] == 0.0
    assert oa.parse_chat({"model": "m", "messages": CHAT1, "temperature": 0.7}, 16, 64)["temperature"] == 0.7


def test_router_serves_only_accepted_versions_without_listing(reg, tmp_path, monkeypatch):
    """A version the gate rejected (or never evaluated) is refused unless allowed; an unknown
    version id is a direct lookup, never a scan of every manifest."""
    rej = reg["en"].register(make_run(tmp_path / "rej", noise=0.5, lora_seed=7),
                             {**_ev(reg["v1"]), "decision": "reject", "reasons": ["FAIL golden"]})["version"]
    plain = reg["en"].register(make_run(tmp_path / "plain", noise=0.5, lora_seed=8))["version"]
    r = Router(reg["uri"], ["en", "zh"], {"en": "en", "zh": "zh"}, "en", refresh_s=0.0)
    for model in (f"en:{rej}", rej, f"en:{plain}"):
        with pytest.raises(oa.ApiError, match="did not pass the gate") as e:
            r.resolve(model, "hi")
        assert e.value.status == 403 and e.value.code == "model_not_servable"
    assert r.resolve(f"en:{reg['v2']}", "") == ("en", reg["v2"])  # accepted by the gate: served
    assert r.resolve(f"en:{reg['v1']}", "") == ("en", reg["v1"])  # champion
    allow = Router(reg["uri"], ["en"], {}, "en", refresh_s=0.0, allow_unpromoted=True)
    assert allow.resolve(f"en:{rej}", "") == ("en", rej)

    def no_scan(self):
        raise AssertionError("the request path listed every manifest")
    monkeypatch.setattr(Registry, "versions", no_scan)
    for bad in ("v1234567890_abcd", "en:v1234567890_abcd", "en:v9999999999_ffff"):
        with pytest.raises(oa.ApiError) as e:
            r.resolve(bad, "")
        assert e.value.status == 404
    assert r.resolve(reg["v2"], "") == ("en", reg["v2"])


def test_engine_bounds_prompts_and_answers_while_a_long_request_runs(reg):
    """Over-long prompts are refused before generation; a long generation does not hold up
    other requests for the same version; another version waits at most queue_timeout_s."""
    import threading
    import time

    from rayft.models.spec import base_spec
    from rayft.serve.engine import EngineBusy

    eng = Engine(base_spec("tiny-qwen2", 0), threads=1, max_prompt_tokens=200, queue_timeout_s=0.5)
    m, local = reg["en"].fetch(reg["v1"])
    h1 = eng.load(f"en/{reg['v1']}", m, local)
    m2, local2 = reg["en"].fetch(reg["v2"])
    h2 = eng.load(f"en/{reg['v2']}", m2, local2)
    req = {"kind": "completion", "prompt": "hello there", "max_tokens": 4, "temperature": 0.0, "top_p": 1.0,
           "stop": [], "seed": None}
    calls = []
    forward = eng.base.forward
    started = threading.Event()

    def slow_forward(*a, **kw):  # the request on thread "long" takes >= 3 s in its first forward
        calls.append(threading.current_thread().name)
        if threading.current_thread().name == "long" and not started.is_set():
            started.set()
            time.sleep(3.0)
        return forward(*a, **kw)
    eng.base.forward = slow_forward
    with pytest.raises(EngineError, match="too long"):
        eng.generate(h1, {**req, "prompt": "word " * 400})
    with pytest.raises(EngineError, match="too long"):  # megabytes refused without tokenizing
        eng.generate(h1, {**req, "prompt": "x" * (1 << 20)})
    with pytest.raises(EngineError, match="context"):
        Engine.generate(eng, h1, {**req, "max_tokens": 4096})
    assert calls == []  # nothing reached the model
    expected = eng.generate(h1, req)["text"]
    long_out = {}
    t = threading.Thread(target=lambda: long_out.update(eng.generate(h1, {**req, "max_tokens": 8})), name="long")
    t.start()
    assert started.wait(30)
    t0 = time.monotonic()
    assert eng.generate(h1, req)["text"] == expected  # same version: runs beside the long one
    assert t.is_alive(), "the short request waited for the long one"
    with pytest.raises(EngineBusy) as busy:  # another adapter: bounded wait, then 503 + Retry-After
        eng.generate(h2, req)
    assert busy.value.retry_after >= 1 and time.monotonic() - t0 < 2.5
    t.join(60)
    assert long_out["completion_tokens"] >= 1
    assert eng.generate(h2, req)["prompt_tokens"] >= 1  # free again


def test_internal_errors_say_nothing_about_the_server(caplog):
    """The gateway's catch-all: a generic 500 with a request id; the detail only in the log."""
    from rayft.serve.app import internal_error

    try:
        raise RuntimeError("ray.exceptions.RayTaskError: /work/main/secret.py at 10.1.2.3:6379")
    except RuntimeError as e:
        r = internal_error(e)
    body = json.loads(r.body)
    assert r.status_code == 500 and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "server_error" and "request id" in body["error"]["message"]
    for leak in ("RayTaskError", "/work", "10.1.2.3", "RuntimeError"):
        assert leak not in r.body.decode()
