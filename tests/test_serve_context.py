"""Issue 20 item 5, memory injection without training ("message mode"): a served line's context
block goes into the system turn of every chat request (serve config context / context_file, or
the registry's block from `rayft registry context`), counts toward the prompt-token limit, and
changes without a redeploy when its file does.

Pure tests first (prompt building, the Contexts reader, config and CLI errors); then one Serve
app on the session Ray, checked through the unmodified openai client against the in-process
Engine's prompt and answer.
"""
from __future__ import annotations

import json
import os
import time

import pytest
import requests

from rayft.config import ConfigError, load
from rayft.registry import Registry
from rayft.testing.runs import make_run

openai = pytest.importorskip("openai")
MEM = "Known facts about the user: her name is Ana, she lives in Porto and prefers short answers."
MEM2 = "Known facts about the user: his name is Bo."
CHAT = [{"role": "user", "content": "Where do I live?"}]


def _ev(champion=None):
    return {"decision": "promote", "champion_version": champion, "gate": {"golden_metric": "loss"},
            "metrics": {"candidate": {"golden": {"loss": 1.0}}}}


def _req(messages=CHAT, context="", max_tokens=12):
    r = {"kind": "chat", "messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "top_p": 1.0,
         "stop": [], "seed": None}
    return r | ({"context": context} if context else {})


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve_context")
    en, zh = Registry(str(d / "reg"), "en"), Registry(str(d / "reg"), "zh")
    v1 = en.register(make_run(d / "en1", noise=0.5, lora_seed=1, system_prompt="You are a helpful assistant."),
                     _ev())["version"]
    en.promote(v1)
    z1 = zh.register(make_run(d / "zh1", noise=0.5, lora_seed=3), _ev())["version"]
    zh.promote(z1)
    return {"dir": d, "uri": str(d / "reg"), "en": en, "zh": zh, "v1": v1, "z1": z1}


@pytest.fixture(scope="module")
def engine(reg):
    from rayft.models.spec import base_spec
    from rayft.serve.engine import Engine

    eng = Engine(base_spec("tiny-qwen2", 0), threads=1)
    h = {}
    for line, key in (("en", "v1"), ("zh", "z1")):
        m, local = reg[line].fetch(reg[key])
        h[line] = eng.load(f"{line}/{reg[key]}", m, local)
    return eng, h


# -- pure ------------------------------------------------------------------------------------
def test_system_turn_places_the_block_after_the_system_prompt():
    from rayft.serve.engine import system_turn

    assert system_turn("trained", None, "") == "trained"
    assert system_turn("trained", None, "MEM") == "trained\n\nMEM"
    assert system_turn("", None, "MEM") == "MEM"
    assert system_turn("trained", "mine", "MEM") == "mine\n\nMEM"  # the request replaces the trained prompt only
    assert system_turn("trained", "", "MEM") == "MEM"
    assert system_turn("trained", "mine", "") == "mine"


def test_prompt_carries_the_block_and_it_counts_toward_the_limit(engine):
    from rayft.data.tokenize import prompt_text
    from rayft.serve.engine import Engine, EngineError

    eng, h = engine
    en = h["en"]
    assert en.system_prompt == "You are a helpful assistant."
    plain, with_ctx = eng.prompt_for(en, _req(), en.tok), eng.prompt_for(en, _req(context=MEM), en.tok)
    assert with_ctx == prompt_text(en.tok, f"{en.system_prompt}\n\n{MEM}", "", CHAT[0]["content"])
    assert plain == prompt_text(en.tok, en.system_prompt, "", CHAT[0]["content"]) and MEM not in plain
    own = [{"role": "system", "content": "Answer in French."}] + CHAT
    assert eng.prompt_for(en, _req(own, MEM), en.tok) == prompt_text(en.tok, f"Answer in French.\n\n{MEM}", "",
                                                                      CHAT[0]["content"])
    comp = {**_req(context=MEM), "kind": "completion", "prompt": "raw text"}
    assert eng.prompt_for(en, comp, en.tok) == "raw text"  # completions are raw: no block
    n_plain = len(eng.prepare(en, _req()).ids)
    n_ctx = len(eng.prepare(en, _req(context=MEM)).ids)
    assert n_ctx > n_plain + 10
    eng.max_prompt_tokens = n_plain + 1
    try:
        eng.prepare(en, _req())
        with pytest.raises(EngineError, match="too long.*context block counts"):
            eng.prepare(en, _req(context=MEM))
    finally:
        eng.max_prompt_tokens = 0
    assert eng.generate(en, _req(context=MEM))["prompt_tokens"] == n_ctx
    from rayft.serve.llamacpp import LlamaCppEngine  # engine=llamacpp: the same prompt builder and limit
    assert LlamaCppEngine.prompt_for is Engine.prompt_for and LlamaCppEngine.prepare is Engine.prepare


def test_contexts_reread_changed_files_and_keep_the_last_good_block(reg, tmp_path, caplog):
    from rayft.registry.context import set_context
    from rayft.serve.context import Contexts

    f = tmp_path / "memories.md"
    f.write_text(MEM + "\n", encoding="utf-8")
    c = Contexts(["en", "zh"], {}, {"en": str(f)}, reg["uri"], refresh_s=0.0)
    c.check()
    assert c.get("en") == MEM and c.get("zh") == ""  # zh: no registry block yet
    f.write_text(MEM2, encoding="utf-8")
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime even on coarse clocks
    assert c.get("en") == MEM2
    f.unlink()
    assert c.get("en") == MEM2  # unreadable: last good block, error reported without the text
    st = c.status()
    assert "no such file" in st["en"]["error"] and str(f) in st["en"]["error"]
    assert MEM2 not in json.dumps(st) and MEM2 not in caplog.text
    f.write_text("", encoding="utf-8")
    assert c.get("en") == "" and "error" not in c.status().get("en", {})
    set_context(reg["zh"], MEM)  # the registry route
    assert c.get("zh") == MEM and c.status()["zh"]["chars"] == len(MEM)
    set_context(reg["zh"], "")
    assert c.get("zh") == "" and "zh" not in c.status()
    assert Contexts(["en"], {"en": " inline "}, {}, reg["uri"], 1.0).get("en") == "inline"


def _cfg(reg, path):
    from rayft.serve.config import ServeConfig
    return load(ServeConfig, None, [f"registry={reg['uri']}", "models=[en]", f"context_file={{en: {path}}}"])


def test_bad_context_config_is_one_line(reg, tmp_path):
    from rayft.serve.app import build_app
    from rayft.serve.config import ServeConfig

    with pytest.raises(ConfigError, match=r"context_file: lines \['xx'\] are not in models"):
        load(ServeConfig, None, ["models=[en]", "context_file={xx: a.md}"])
    with pytest.raises(ConfigError, match="both set"):
        load(ServeConfig, None, ["models=[en]", "context={en: a}", "context_file={en: a.md}"])
    missing = tmp_path / "nope.md"
    with pytest.raises(ConfigError, match=f"context_file: {missing}: no such file"):
        build_app(_cfg(reg, missing))
    binary = tmp_path / "bin.md"
    binary.write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(ConfigError, match=f"context_file: {binary}: not UTF-8"):
        build_app(_cfg(reg, binary))
    big = tmp_path / "big.md"
    big.write_text("x" * (300 * 1024))
    with pytest.raises(ConfigError, match="over 262144 bytes"):
        build_app(_cfg(reg, big))


def test_registry_context_command(reg, tmp_path):
    from rayft.cli import main
    from rayft.registry.commands import RegistryConfig, run_context

    f = tmp_path / "mem.md"
    f.write_text(MEM, encoding="utf-8")
    cfg = RegistryConfig(uri=reg["uri"], name="zh")
    assert run_context(cfg) == "zh: no context block"
    out = run_context(cfg.model_copy(update={"file": str(f)}))
    assert out.startswith("zh: context block sha256 ") and MEM not in out
    assert (reg["dir"] / "reg" / "zh" / "context.md").read_text(encoding="utf-8") == MEM
    assert json.loads(run_context(cfg.model_copy(update={"json": True})))["context"]["chars"] == len(MEM)
    events = [json.loads(p.read_text()) for p in (reg["dir"] / "reg" / "zh" / "events").glob("*-context.json")]
    assert events and all(MEM not in json.dumps(e) for e in events)
    assert run_context(cfg.model_copy(update={"clear": True})) == "zh: no context block"
    assert not (reg["dir"] / "reg" / "zh" / "context.md").exists()
    with pytest.raises(ConfigError, match=f"file: {tmp_path / 'gone.md'}: cannot read it"):
        run_context(cfg.model_copy(update={"file": str(tmp_path / "gone.md")}))
    assert main(["registry", "context", f"uri={reg['uri']}", "name=zh", f"file={tmp_path / 'gone.md'}"]) == 2


# -- through Ray Serve and the openai client ---------------------------------------------------
@pytest.mark.ray
@pytest.mark.timeout(300)
def test_served_context_reaches_the_model_and_updates_without_redeploy(ray_session, reg, engine, tmp_path):
    from ray import serve

    from rayft.registry.context import set_context
    from rayft.serve.config import ServeConfig
    from rayft.serve.run import start
    from rayft.testing.net import free_port

    eng, h = engine
    f = tmp_path / "memories.md"
    f.write_text(MEM, encoding="utf-8")
    set_context(reg["zh"], MEM2)  # zh: the registry's block
    cfg = load(ServeConfig, os.path.join(os.path.dirname(__file__), "..", "configs", "serve.yaml"), [
        f"registry={reg['uri']}", "models=[en, zh]", f"port={free_port()}", "api_key_env=RAYFT_TEST_NO_KEY_CTX",
        "num_cpus=0.5", "blocking=false", "max_tokens_default=12", "alias_refresh_s=0.2",
        "app_name=rayft_context_test", f"context_file={{en: {f}}}"])
    os.environ.pop("RAYFT_TEST_NO_KEY_CTX", None)
    url = start(cfg)
    try:
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)

        def served(model: str, **kw):
            return c.chat.completions.create(model=model, messages=CHAT, max_tokens=12, temperature=0, **kw)

        def n_tokens(line: str, context: str = "") -> int:
            return len(eng.prepare(h[line], _req(context=context)).ids)

        r = served("en")
        want = eng.generate(h["en"], _req(context=MEM))
        assert r.usage.prompt_tokens == want["prompt_tokens"] == n_tokens("en", MEM) > n_tokens("en")
        assert r.choices[0].message.content == want["text"]  # the in-process answer to the prompt with the block
        s = "".join(ch.choices[0].delta.content or "" for ch in served("en", stream=True) if ch.choices)
        assert s == want["text"]
        z = served("zh")
        assert z.usage.prompt_tokens == n_tokens("zh", MEM2) > n_tokens("zh")
        assert z.choices[0].message.content == eng.generate(h["zh"], _req(context=MEM2))["text"]
        t = c.completions.create(model="en", prompt="Once upon a time", max_tokens=3)
        assert t.usage.prompt_tokens == len(h["en"].tok("Once upon a time", add_special_tokens=False)["input_ids"])
        health = requests.get(f"{url}/health", timeout=60).json()
        assert health["contexts"]["en"]["chars"] == len(MEM) and str(f) in health["contexts"]["en"]["source"]
        assert MEM not in json.dumps(health)

        def until(line: str, tokens: int) -> None:  # the gateway re-reads within alias_refresh_s
            deadline = time.monotonic() + 30
            while (got := served(line).usage.prompt_tokens) != tokens and time.monotonic() < deadline:
                time.sleep(0.2)
            assert got == tokens

        tmp = tmp_path / "memories.md.tmp"  # an atomic replace, as an editor or a job would do it
        tmp.write_text(MEM2, encoding="utf-8")
        os.replace(tmp, f)
        until("en", n_tokens("en", MEM2))
        assert served("en").choices[0].message.content == eng.generate(h["en"], _req(context=MEM2))["text"]
        f.write_text("", encoding="utf-8")
        until("en", n_tokens("en"))
        set_context(reg["zh"], "")  # `rayft registry context name=zh clear=true`
        until("zh", n_tokens("zh"))
    finally:
        serve.shutdown()
