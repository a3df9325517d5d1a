"""Fuzz the OpenAI endpoints (issue 17): generated JSON shapes, types, sizes and unicode.

In-process (fast, hundreds of examples): the request validation layer (``openai_api``) and
the model-id router. Invariant: a request is either a fully validated dict (types and ranges
the engine can rely on) or an ``ApiError`` 400/413 with an OpenAI-shaped body; nothing else
ever escapes. Over HTTP (~30 requests against a running app on the session Ray): never a
500, never traceback or exception text in a body.
"""
from __future__ import annotations

import json
import math
import os

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rayft.serve import openai_api as oa
from rayft.testing.net import free_port

pytestmark = pytest.mark.timeout(300)
LIMIT = 8
KEYS = ["model", "messages", "prompt", "max_tokens", "max_completion_tokens", "n", "temperature", "top_p",
        "seed", "stop", "stream", "echo", "user", "logprobs"]
LEAKS = ("Traceback", "RayTaskError", "Error:", "/work", "/tmp", "File \"", "site-packages", "127.0.0.1:")

# text with everything unicode has: astral planes, controls, and lone surrogates
TEXT = st.text(st.characters(codec=None, blacklist_categories=()), max_size=40) | st.sampled_from(
    ["", " ", "\ud800", "a\udfffb", "\x00", "ｐａｓｓ\u200b", "侦探", "🙂" * 10, "auto", "en", "champion",
     "en:previous", "en:../../etc", "v1234567890_abcd", "x" * 300])
NUMBERS = (st.integers() | st.integers(min_value=-(10**40), max_value=10**40)
           | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0, 1, -1, 2**63, 2**64, 2**70, 1e-40,
                                                                               5e-324, 1.0, 0.5, 128, 129]))
SCALARS = st.none() | st.booleans() | NUMBERS | TEXT
JSON = st.recursive(SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(TEXT, c, max_size=4),
                    max_leaves=12)
MESSAGE = st.fixed_dictionaries({}, optional={"role": st.sampled_from(["user", "system", "assistant", "tool", ""])
                                              | JSON,
                                              "content": TEXT | JSON | st.lists(st.fixed_dictionaries(
                                                  {"type": st.sampled_from(["text", "image_url"]) | JSON,
                                                   "text": TEXT | JSON}), max_size=3)})
BODY = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(["en", "auto", "en:champion"]) | TEXT | JSON,
    "messages": st.lists(MESSAGE, max_size=4) | JSON,
    "prompt": TEXT | st.lists(TEXT, max_size=2) | JSON,
    "max_tokens": NUMBERS | JSON, "n": NUMBERS | JSON, "temperature": NUMBERS | JSON, "top_p": NUMBERS | JSON,
    "seed": NUMBERS | JSON, "stop": TEXT | st.lists(TEXT, max_size=6) | JSON, "stream": st.booleans() | JSON,
    "echo": JSON}) | st.dictionaries(st.sampled_from(KEYS) | TEXT, JSON, max_size=6)
# a valid request with one or two fields replaced by anything: reaches the deeper checks
VALID = {"model": "en", "messages": [{"role": "user", "content": "hi"}], "prompt": "hi", "max_tokens": 2}
HOSTILE = st.sampled_from([math.nan, math.inf, -math.inf, 2**70, -(2**70), 10**30, 1e-40, 5e-324, 1e308, "\ud800",
                           "a\udfffb", [[[[]]]], {}, [], "", True, None, [{"role": "user", "content": "\udc80"}],
                           [{"role": "user", "content": [{"type": "text", "text": math.nan}]}]])
MUTATED = st.builds(lambda upd: {**VALID, **upd}, st.dictionaries(
    st.sampled_from(KEYS), HOSTILE | SCALARS | JSON | st.lists(MESSAGE, min_size=1, max_size=3),
    min_size=1, max_size=2))


def _encode(body, ascii_: bool) -> bytes:
    """JSON text as a client could send it: NaN/Infinity allowed, lone surrogates either escaped
    (\\ud800) or raw (invalid UTF-8)."""
    return json.dumps(body, allow_nan=True, ensure_ascii=ascii_).encode("utf-8", "surrogatepass")


def _check_request(req: dict) -> None:
    """What the engine relies on, for a request validation let through."""
    assert isinstance(req["model"], str) and 0 < len(req["model"]) <= 256
    assert type(req["max_tokens"]) is int and 1 <= req["max_tokens"] <= LIMIT
    t, p = req["temperature"], req["top_p"]
    assert isinstance(t, float) and math.isfinite(t) and (t == 0.0 or oa.MIN_TEMPERATURE <= t <= 2.0)
    assert isinstance(p, float) and 0.0 <= p <= 1.0
    assert req["seed"] is None or (type(req["seed"]) is int and oa.SEED_RANGE[0] <= req["seed"] <= oa.SEED_RANGE[1])
    assert isinstance(req["stop"], list) and all(isinstance(s, str) and s for s in req["stop"])
    assert isinstance(req["stream"], bool)
    texts = [m["content"] for m in req["messages"]] if req["kind"] == "chat" else [req["prompt"]]
    if req["kind"] == "chat":
        assert req["messages"] and req["messages"][-1]["role"] == "user"
        assert all(m["role"] in oa.ROLES for m in req["messages"])
    for s in texts + req["stop"] + [req["model"]]:
        assert isinstance(s, str)
        s.encode("utf-8")  # the tokenizer can take it


def _validate(raw: bytes, parse) -> str:
    try:
        req = parse(oa.parse_body(raw), 4, LIMIT)
    except oa.ApiError as e:
        assert e.status in (400, 413), e.status
        err = e.body()["error"]
        assert set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str)
        json.dumps(e.body())  # serializable
        return "refused"
    _check_request(req)
    return "accepted"


SEEN: dict[str, int] = {}


def _count(key: str) -> None:
    SEEN[key] = SEEN.get(key, 0) + 1


@settings(max_examples=400, deadline=None, database=None, derandomize=True)
@given(body=BODY | MUTATED, ascii_=st.booleans(), chat=st.booleans())
def test_fuzz_validation_structured(body, ascii_, chat):
    _count(_validate(_encode(body, ascii_), oa.parse_chat if chat else oa.parse_completion))


@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(raw=st.binary(max_size=200) | st.builds(lambda b, cut: b[:cut], st.builds(
    lambda body: _encode(body, False), BODY), st.integers(0, 200)))
def test_fuzz_validation_raw_bytes(raw):
    """Random and truncated bytes."""
    _count(_validate(raw, oa.parse_chat))


@settings(max_examples=60, deadline=None, database=None, derandomize=True)
@given(depth=st.integers(1, 3000), kind=st.sampled_from("[{"), digits=st.integers(1, 6000))
def test_fuzz_validation_sizes(depth, kind, digits):
    """Deep nesting and long integers, well past Python's recursion and int-string limits."""
    nest = (b'{"a":' * depth + b"1" + b"}" * depth) if kind == "{" else (b"[" * depth + b"]" * depth)
    _count(_validate(b'{"model": "en", "x": ' + nest + b"}", oa.parse_chat))
    num = b"9" * digits
    _count(_validate(b'{"model": "en", "prompt": "p", "max_tokens": ' + num + b"}", oa.parse_completion))


@pytest.fixture(scope="module")
def empty_router(tmp_path_factory):
    from rayft.serve.routing import Router

    d = tmp_path_factory.mktemp("fuzz_reg")
    return Router(str(d / "reg"), ["en", "zh"], {"en": "en", "zh": "zh"}, "en", refresh_s=0.0)


@settings(max_examples=200, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(model=TEXT | st.builds(lambda a, b: f"{a}:{b}", TEXT, TEXT), text=TEXT)
def test_fuzz_router_model_ids(empty_router, model, text):
    """Any model id (path-like, unicode, huge) -> 404/403 ApiError, nothing read outside the registry."""
    try:
        empty_router.resolve(model, text)
    except oa.ApiError as e:
        assert e.status in (400, 403, 404) and len(e.message) < 1000
        _count("router refused")
        return
    raise AssertionError(f"{model!r} resolved in an empty registry")


# -- over HTTP ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fuzz_app(ray_session, tmp_path_factory):
    from ray import serve

    from rayft.config import load
    from rayft.registry import Registry
    from rayft.serve.config import ServeConfig
    from rayft.serve.run import start
    from rayft.testing.runs import make_run

    d = tmp_path_factory.mktemp("fuzz_serve")
    en = Registry(str(d / "reg"), "en")
    ev = {"decision": "promote", "champion_version": None, "gate": {"golden_metric": "loss"},
          "metrics": {"candidate": {"golden": {"loss": 1.0}}}}
    en.promote(en.register(make_run(d / "en1", noise=0.5, lora_seed=1), ev)["version"])
    cfg = load(ServeConfig, os.path.join(os.path.dirname(__file__), "..", "configs", "serve.yaml"), [
        f"registry={d / 'reg'}", "models=[en]", f"port={free_port()}", "api_key_env=RAYFT_FUZZ_NO_KEY",
        "num_cpus=0.5", "blocking=false", "max_tokens_default=2", f"max_tokens_limit={LIMIT}",
        "api_docs=true", "app_name=rayft_fuzz"])
    url = start(cfg)
    yield url
    # shut Serve down, not only the app: a later module's serve.start on another port would
    # otherwise find Serve running with this module's HTTP options (its port never listens)
    serve.shutdown()


def _check_http(r: requests.Response) -> None:
    assert r.status_code != 500 and r.status_code < 600, (r.status_code, r.text[:300])
    for word in LEAKS:
        assert word not in r.text, (word, r.status_code, r.text[:300])
    if r.headers.get("content-type", "").startswith("application/json"):
        body = r.json()
        if r.status_code >= 400:
            assert set(body["error"]) == {"message", "type", "param", "code"}, body
        else:
            assert body["choices"] and body["usage"]["completion_tokens"] <= LIMIT


@settings(max_examples=30, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=MUTATED | BODY, ascii_=st.booleans(),
       path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
def test_fuzz_http_never_500(fuzz_app, body, ascii_, path):
    if isinstance(body, dict) and isinstance(body.get("max_tokens"), int) and body.get("max_tokens", 0) > LIMIT:
        body["max_tokens"] = LIMIT  # keep generation short; out-of-range values are covered in-process
    r = requests.post(f"{fuzz_app}{path}", data=_encode(body, ascii_),
                      headers={"Content-Type": "application/json"}, timeout=120)
    _check_http(r)
    _count(f"http {r.status_code}")


def test_http_valid_requests_and_docs_when_enabled(fuzz_app):
    r = requests.post(f"{fuzz_app}/v1/chat/completions", timeout=120,
                      json={"model": "en", "messages": [{"role": "user", "content": "侦探 🙂 hello"}],
                            "temperature": 0.7, "seed": 2**63, "max_tokens": 3})
    assert r.status_code == 200, r.text[:300]
    _check_http(r)
    doc = requests.get(f"{fuzz_app}/openapi.json", timeout=60)
    assert doc.status_code == 200 and "/v1/chat/completions" in doc.json()["paths"]
    assert requests.get(f"{fuzz_app}/docs", timeout=60).status_code == 200
    print("fuzz counts:", json.dumps(SEEN, sort_keys=True))
