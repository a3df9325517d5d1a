"""Issue 20: real token streaming and batched generation in `rayft serve`, on the session Ray.

One Serve app for the module (tiny model, two LoRA versions of one base): the unmodified
openai client's streaming iterator gets the text piece by piece (same text as the
non-streamed greedy answer), a client that disconnects mid-stream stops its generation on
the replica, and concurrent requests (two adapters, streaming and not) are batched and
answer exactly what they answer alone.
"""
from __future__ import annotations

import json
import os
import threading
import time

import pytest
import requests

from rayft.config import load
from rayft.registry import Registry
from rayft.testing.net import free_port
from rayft.testing.runs import make_run

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
openai = pytest.importorskip("openai")
APP = "rayft_stream_test"
CHAT = [{"role": "user", "content": "Rewrite as a viral hook: the detective opens the letter."}]
PROMPTS = ["hello there", "Rewrite as a viral hook: the storm hits the village.", "侦探打开了信",
           "a b c d e f g h i j k"]


def _ev(champion=None):
    return {"decision": "promote", "champion_version": champion, "gate": {"golden_metric": "loss"},
            "metrics": {"candidate": {"golden": {"loss": 1.0}}}}


@pytest.fixture(scope="module")
def served(ray_session, tmp_path_factory):
    from ray import serve

    from rayft.serve.config import ServeConfig
    from rayft.serve.run import start

    d = tmp_path_factory.mktemp("serve_stream")
    en = Registry(str(d / "reg"), "en")
    v1 = en.register(make_run(d / "en1", noise=0.5, lora_seed=1), _ev())["version"]
    en.promote(v1)
    v2 = en.register(make_run(d / "en2", noise=0.5, lora_seed=2), _ev(v1))["version"]
    cfg = load(ServeConfig, os.path.join(os.path.dirname(__file__), "..", "configs", "serve.yaml"), [
        f"registry={d / 'reg'}", "models=[en]", f"port={free_port()}", "api_key_env=RAYFT_TEST_NO_KEY_20",
        "num_cpus=0.5", "blocking=false", "max_tokens_default=16", "max_tokens_limit=512",
        "max_batch_size=8", "batch_wait_timeout_s=0.05", f"app_name={APP}"])
    assert cfg.topology == "auto"  # one base model: gateway and model in one deployment (topology=single)
    os.environ.pop("RAYFT_TEST_NO_KEY_20", None)
    url = start(cfg)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    client.chat.completions.create(model="en", messages=CHAT, max_tokens=2)  # loaded
    yield {"url": url, "client": client, "v1": v1, "v2": v2,
           "handle": serve.get_deployment_handle("Gateway", app_name=APP)}
    serve.shutdown()


def _stats(served) -> dict:
    return served["handle"].stats.remote().result(timeout_s=60)


def test_openai_stream_arrives_token_by_token(served):
    c = served["client"]
    whole = c.chat.completions.create(model="en", messages=CHAT, max_tokens=48)
    t0 = time.monotonic()
    pieces, stamps, finish, model = [], [], None, None
    for ch in c.chat.completions.create(model="en", messages=CHAT, max_tokens=48, stream=True):
        model = ch.model
        if ch.choices and ch.choices[0].delta.content:
            pieces.append(ch.choices[0].delta.content)
            stamps.append(time.monotonic() - t0)
        if ch.choices and ch.choices[0].finish_reason:
            finish = ch.choices[0].finish_reason
    end = time.monotonic() - t0
    assert "".join(pieces) == whole.choices[0].message.content  # greedy: same answer
    assert len(pieces) > 5, pieces  # token by token, not one chunk
    assert finish == whole.choices[0].finish_reason and model == f"en:{served['v1']}"
    assert stamps[0] < stamps[-1] and stamps[0] < end  # the first text came before the answer was done
    # /v1/completions streams too
    plain = c.completions.create(model="en", prompt="Once upon a time", max_tokens=24)
    parts = [ch.choices[0].text for ch in c.completions.create(model="en", prompt="Once upon a time",
                                                                max_tokens=24, stream=True) if ch.choices]
    assert "".join(parts) == plain.choices[0].text and len([p for p in parts if p]) > 1


def test_raw_sse_format_and_stop_strings(served):
    url, c = served["url"], served["client"]
    r = requests.post(f"{url}/v1/chat/completions", json={"model": "en", "messages": CHAT, "max_tokens": 12,
                                                          "stream": True}, stream=True, timeout=120)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [ln for ln in r.iter_lines(decode_unicode=True) if ln]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length") and chunks[-1]["usage"]["completion_tokens"]
    # a stop string: the stream never sends text past it, and ends like the plain answer
    full = c.completions.create(model="en", prompt="Once upon a time", max_tokens=32).choices[0].text
    at = next(i for i in range(len(full) // 2, len(full) - 1) if full[i:i + 2].isascii() and full[i:i + 2].isalpha())
    stop = full[at:at + 2]
    want = c.completions.create(model="en", prompt="Once upon a time", max_tokens=32, stop=[stop]).choices[0]
    got = list(c.completions.create(model="en", prompt="Once upon a time", max_tokens=32, stop=[stop], stream=True))
    assert "".join(ch.choices[0].text for ch in got if ch.choices) == want.text
    assert got[-1].choices[0].finish_reason == want.finish_reason == "stop"
    # errors before the first token keep their HTTP status
    with pytest.raises(openai.NotFoundError):
        list(c.chat.completions.create(model="nope", messages=CHAT, stream=True))
    with pytest.raises(openai.BadRequestError, match="too long"):
        list(c.chat.completions.create(model="en", messages=[{"role": "user", "content": "word " * 40_000}],
                                       stream=True))


def test_client_disconnect_stops_generation(served):
    before = _stats(served)["stats"].get("cancelled", 0)
    r = requests.post(f"{served['url']}/v1/completions", stream=True, timeout=120,
                      json={"model": "en", "prompt": "Rewrite as a viral hook: the detective opens the letter.",
                            "max_tokens": 512, "stream": True})
    assert r.status_code == 200
    lines = r.iter_lines()
    got = 0
    while got < 3:
        if next(lines).startswith(b"data: "):
            got += 1
    r.close()  # the client goes away after 3 chunks of up to 512 tokens
    t0 = time.monotonic()
    end, st = t0 + 60, {}
    while time.monotonic() < end:
        st = _stats(served)
        if st["stats"].get("cancelled", 0) > before:
            break
        time.sleep(0.2)
    hit = [x for x in st["recent"] if x["cancelled"] and x["max_tokens"] == 512]
    assert hit and hit[-1]["completion_tokens"] < 512, st
    # the replica is free again: a short request is answered at once
    assert served["client"].completions.create(model="en", prompt="hi", max_tokens=2).usage.completion_tokens >= 1


def test_concurrent_requests_are_batched_and_answer_like_alone(served):
    c, v2 = served["client"], served["v2"]
    cases = [(m, p) for m in ("en", f"en:{v2}") for p in PROMPTS]  # two adapters of one base

    def ask(model, prompt, stream=False):
        msgs = [{"role": "user", "content": prompt}]
        if stream:
            return "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
                model=model, messages=msgs, max_tokens=16, stream=True) if ch.choices)
        return c.chat.completions.create(model=model, messages=msgs, max_tokens=16).choices[0].message.content

    alone = [ask(m, p) for m, p in cases]
    assert len(set(alone)) == len(alone)  # every prompt and version answers differently
    before = _stats(served)["stats"]
    for stream in (False, True):
        out: list = [None] * len(cases)
        go = threading.Barrier(len(cases))

        def run(i, m, p):
            go.wait()
            out[i] = ask(m, p, stream)

        threads = [threading.Thread(target=run, args=(i, m, p)) for i, (m, p) in enumerate(cases)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert out == alone, stream
    after = _stats(served)["stats"]
    assert after["max_batch"] >= 2  # requests shared a forward pass
    assert after["batches"] - before.get("batches", 0) < after["requests"] - before.get("requests", 0)


def test_single_topology_serves_from_one_deployment(served):
    """topology=auto with one base model: no separate model deployment, so a request takes one
    Serve hop (proxy -> gateway replica, which holds the model)."""
    from ray import serve

    deps = serve.status().applications[APP].deployments
    assert set(deps) == {"Gateway"}, deps
    assert _stats(served)["stats"]["requests"] >= 1


def test_topology_choice():
    from rayft.config import ConfigError
    from rayft.serve.app import topology_of
    from rayft.serve.config import ServeConfig

    one, two = {"a": None}, {"a": None, "b": None}
    assert topology_of(ServeConfig(), one) == "single"
    assert topology_of(ServeConfig(), two) == "split"
    assert topology_of(ServeConfig(topology="split"), one) == "split"
    with pytest.raises(ConfigError, match="topology=single hosts one base model.*topology=split"):
        topology_of(ServeConfig(topology="single"), two)
    with pytest.raises(ConfigError, match="topology") as e:  # a bad value: one line naming the key
        load(ServeConfig, None, ["topology=both"])
    assert "\n" not in str(e.value)
