"""`rayft serve` on the session Ray: an unmodified openai client, auth, 4xx errors, en/zh routing,
tampered versions refused, and promote -> rollback -> promote under load with zero failures.
"""
from __future__ import annotations

import os
import socket
import threading
import time

import pytest
import requests

from rayft.config import load
from rayft.evaluate.synth import make_run
from rayft.registry import Registry

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]
openai = pytest.importorskip("openai")
KEY = "test-key-6"
CHAT = [{"role": "user", "content": "Rewrite as a viral hook: the detective opens the letter."}]


def _ev(champion=None):
    return {"decision": "promote", "champion_version": champion, "gate": {"golden_metric": "loss"},
            "metrics": {"candidate": {"golden": {"loss": 1.0}}}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(ray_session, tmp_path_factory):
    from ray import serve

    from rayft.serve.config import ServeConfig
    from rayft.serve.run import start

    d = tmp_path_factory.mktemp("serve")
    en, zh = Registry(str(d / "reg"), "en"), Registry(str(d / "reg"), "zh")
    v1 = en.register(make_run(d / "en1", noise=0.5, lora_seed=1), _ev())["version"]
    en.promote(v1)
    v2 = en.register(make_run(d / "en2", noise=0.5, lora_seed=2), _ev(v1))["version"]
    bad = en.register(make_run(d / "en3", noise=0.5, lora_seed=4), _ev(v1))["version"]
    z1 = zh.register(make_run(d / "zh1", noise=0.5, lora_seed=3, language="zh"), _ev())["version"]
    zh.promote(z1)
    w = d / "reg" / "en" / "versions" / bad / "artifacts" / "adapter" / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:-1] + b"\x00")  # tampered after registration
    os.environ["RAYFT_TEST_API_KEY_6"] = KEY
    cfg = load(ServeConfig, os.path.join(os.path.dirname(__file__), "..", "configs", "serve.yaml"), [
        f"registry={d / 'reg'}", "models=[en, zh]", "languages={en: en, zh: zh}", f"port={_free_port()}",
        "api_key_env=RAYFT_TEST_API_KEY_6", "num_cpus=0.5",
        "blocking=false", "max_tokens_default=8", "alias_refresh_s=0.2", "app_name=rayft_test6"])
    url = start(cfg)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)
    yield {"url": url, "client": client, "en": en, "zh": zh, "v1": v1, "v2": v2, "z1": z1, "bad": bad}
    serve.shutdown()
    os.environ.pop("RAYFT_TEST_API_KEY_6", None)


def test_openai_client_chat_completion_and_stream(served):
    c = served["client"]
    r = c.chat.completions.create(model="en", messages=CHAT, max_tokens=10)
    assert r.model == f"en:{served['v1']}" and r.object == "chat.completion"
    assert isinstance(r.choices[0].message.content, str) and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens >= 1
    streamed = "".join(ch.choices[0].delta.content or "" for ch in
                       c.chat.completions.create(model="en", messages=CHAT, max_tokens=10, stream=True) if ch.choices)
    assert streamed == r.choices[0].message.content  # greedy: same answer either way
    t = c.completions.create(model=f"en:{served['v2']}", prompt="Once upon a time", max_tokens=5)
    assert t.model == f"en:{served['v2']}" and t.object == "text_completion" and t.usage.completion_tokens <= 5
    ids = {m.id for m in c.models.list().data}
    assert {"en", "zh"} <= ids
    h = requests.get(f"{served['url']}/health", timeout=60)
    assert h.status_code == 200 and h.json()["models"]["en"]["serving"] == served["v1"]


def test_auth_required_when_key_configured(served):
    url = served["url"]
    nokey = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        nokey.chat.completions.create(model="en", messages=CHAT)
    r = requests.post(f"{url}/v1/chat/completions", json={"model": "en", "messages": CHAT}, timeout=60)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "API key" in r.json()["error"]["message"]
    assert requests.get(f"{url}/v1/models", timeout=60).status_code == 401
    assert requests.get(f"{url}/health", timeout=60).status_code == 200  # probes need no key


def test_bad_requests_are_clear_4xx(served):
    c, url = served["client"], served["url"]
    auth = {"Authorization": f"Bearer {KEY}"}
    r = requests.post(f"{url}/v1/chat/completions", data=b"{not json", headers=auth, timeout=60)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = requests.post(f"{url}/v1/completions", json={"model": "en"}, headers=auth, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    with pytest.raises(openai.BadRequestError, match="messages"):
        c.chat.completions.create(model="en", messages=[])
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        c.chat.completions.create(model="en", messages=CHAT, max_tokens=100_000)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        c.chat.completions.create(model="gpt-4o", messages=CHAT)
    with pytest.raises(openai.NotFoundError, match="no such version"):
        c.chat.completions.create(model="v1234567890_abcd", messages=CHAT)
    with pytest.raises(openai.NotFoundError, match="previous of zh is not set"):
        c.chat.completions.create(model="zh:previous", messages=CHAT)


def test_language_routing_to_separate_models(served):
    c = served["client"]
    zh = c.chat.completions.create(model="auto", messages=[{"role": "user", "content": "侦探终于打开了红色的信。"}])
    assert zh.model == f"zh:{served['z1']}"
    en = c.chat.completions.create(model="auto", messages=CHAT)
    assert en.model.startswith("en:")
    assert c.chat.completions.create(model=served["z1"], messages=CHAT).model == f"zh:{served['z1']}"


def test_tampered_version_is_refused(served):
    before = served["en"].aliases()
    with pytest.raises(openai.ConflictError, match="sha256"):
        served["client"].chat.completions.create(model=f"en:{served['bad']}", messages=CHAT)
    assert served["en"].aliases() == before


def _wait_for(client, version, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        if client.chat.completions.create(model="en", messages=CHAT, max_tokens=2).model == f"en:{version}":
            return
        time.sleep(0.1)
    raise AssertionError(f"en never switched to {version}")


def test_promote_rollback_promote_under_load_fails_nothing(served):
    c, en, v1, v2 = served["client"], served["en"], served["v1"], served["v2"]
    stop, results, errors = threading.Event(), [], []

    def load_loop(max_tokens):
        cl = openai.OpenAI(base_url=f"{served['url']}/v1", api_key=KEY, max_retries=0, timeout=120)
        while not stop.is_set():
            try:
                r = cl.chat.completions.create(model="en", messages=CHAT, max_tokens=max_tokens)
                results.append((r.model, max_tokens, r.choices[0].message.content))
            except Exception as e:  # any failure counts
                errors.append(repr(e))

    threads = [threading.Thread(target=load_loop, args=(n,), daemon=True) for n in (8, 8, 24)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        en.promote(v2)
        _wait_for(c, v2)
        en.rollback()
        _wait_for(c, v1)
        en.promote(v2)
        _wait_for(c, v2)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert errors == []
    models = {m for m, _, _ in results}
    assert models == {f"en:{v1}", f"en:{v2}"} and len(results) >= 10
    # the served model really changed: same greedy prompt, different answers per version
    short = {m: txt for m, n, txt in results if n == 8}
    assert short[f"en:{v1}"] != short[f"en:{v2}"]
    assert requests.get(f"{served['url']}/health", timeout=60).json()["models"]["en"]["serving"] == v2
