"""Issue 20 without Ray: the engine's batched generation and per-row streaming/cancel, the SSE
chunk shapes, and the batching config keys."""
from __future__ import annotations

import json
import threading

import pytest

from rayft.config import ConfigError, load
from rayft.registry import Registry
from rayft.serve import openai_api as oa
from rayft.serve.config import ServeConfig
from rayft.testing.runs import make_run

PROMPTS = ["hello there", "Rewrite as a viral hook: the detective opens the letter.", "侦探打开了信",
           "a b c d e f g h i j k"]


@pytest.fixture(scope="module")
def eng(tmp_path_factory):
    from rayft.models.spec import base_spec
    from rayft.serve.engine import Engine

    d = tmp_path_factory.mktemp("batch_engine")
    en = Registry(str(d / "reg"), "en")
    ev = {"decision": "promote", "champion_version": None, "gate": {"golden_metric": "loss"},
          "metrics": {"candidate": {"golden": {"loss": 1.0}}}}
    e = Engine(base_spec("tiny-qwen2", 0), threads=1)
    hs = []
    for seed in (1, 2):
        v = en.register(make_run(d / f"r{seed}", noise=0.5, lora_seed=seed), ev)["version"]
        hs.append(e.load(f"en/{v}", *en.fetch(v)))
    return e, hs


def _req(prompt, kind="chat", max_tokens=16, stop=()):
    return {"kind": kind, "messages": [{"role": "user", "content": prompt}], "prompt": prompt,
            "max_tokens": max_tokens, "temperature": 0.0, "top_p": 1.0, "stop": list(stop), "seed": None}


def test_batch_answers_exactly_like_alone(eng):
    """Different prompts (lengths), endpoints, max_tokens and two adapters in one batch: every
    row is the answer it gets alone (left padding + attention mask; adapters grouped)."""
    e, (h1, h2) = eng
    cases = [(h, _req(p, k, m)) for h in (h1, h2) for p in PROMPTS for k, m in (("chat", 12), ("completion", 5))]
    alone = [e.generate(h, r) for h, r in cases]
    before = dict(e.stats)
    batch = e.run_batch([e.prepare(h, r) for h, r in cases])
    assert batch == alone
    assert e.stats["batches"] - before.get("batches", 0) == 2  # one generate per adapter
    assert e.stats["max_batch"] == 8
    assert len({a["text"] for a in alone}) == len(alone)


def test_streaming_rows_send_text_as_generated_and_stop(eng):
    e, (h1, _) = eng
    want = e.generate(h1, _req(PROMPTS[1], "completion", 40))
    events: list = []
    j = e.prepare(h1, _req(PROMPTS[1], "completion", 40), on_event=lambda k, x: events.append((k, x)))
    plain = e.prepare(h1, _req(PROMPTS[0], "chat", 8))
    out = e.run_batch([j, plain])
    texts = [x for k, x in events if k == "text"]
    assert out[0] == want and "".join(texts) == want["text"] and len(texts) > 3
    assert [k for k, _ in events].count("end") == 1 and events[-1] == ("end", want)
    assert out[1] == e.generate(h1, _req(PROMPTS[0], "chat", 8))  # the row beside it is unaffected
    # a stop string: the stream never sends text past it and the row stops generating there
    full = want["text"]
    at = next(i for i in range(len(full) // 2, len(full) - 1) if full[i:i + 2].isascii() and full[i:i + 2].isalpha())
    stop = full[at:at + 2]
    ref = e.generate(h1, _req(PROMPTS[1], "completion", 40, [stop]))
    events.clear()
    r = e.run_batch([e.prepare(h1, _req(PROMPTS[1], "completion", 40, [stop]),
                               on_event=lambda k, x: events.append((k, x)))])[0]
    assert "".join(x for k, x in events if k == "text") == ref["text"] == r["text"] and r["finish_reason"] == "stop"
    assert stop not in r["text"] and r["completion_tokens"] < 40


def test_cancel_stops_one_row_at_the_next_token(eng):
    e, (h1, _) = eng
    cancel = threading.Event()
    seen: list = []

    def on_event(kind, x):
        seen.append(kind)
        if seen.count("text") == 3:
            cancel.set()  # what a client disconnect does

    j = e.prepare(h1, _req(PROMPTS[1], "completion", 200), on_event=on_event, cancel=cancel)
    other = _req(PROMPTS[0], "completion", 30)
    before = e.stats["cancelled"]
    out = e.run_batch([j, e.prepare(h1, other)])
    assert out[0]["completion_tokens"] < 20 and e.stats["cancelled"] == before + 1
    assert e.recent[-2]["cancelled"] and not e.recent[-1]["cancelled"]
    assert out[1] == e.generate(h1, other)  # its batch mate ran to the end, unchanged


def test_sse_chunks_and_batch_config():
    req = oa.parse_chat({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}, 8, 8)
    s = oa.Stream(req, "en:v1")
    a, b = json.loads(s.text("he")[6:]), json.loads(s.text("y")[6:])
    assert a["object"] == "chat.completion.chunk" and a["id"] == b["id"]
    assert a["choices"][0]["delta"] == {"role": "assistant", "content": "he"} and b["choices"][0]["delta"] == {
        "content": "y"}
    end = s.end({"text": "hey", "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 2})
    assert end[-1] == "data: [DONE]\n\n" and json.loads(end[0][6:])["usage"]["total_tokens"] == 3
    assert json.loads(oa.Stream.error(oa.ApiError(503, "busy"))[6:])["error"]["message"] == "busy"
    c = oa.Stream(oa.parse_completion({"model": "m", "prompt": "x"}, 8, 8), "en:v1")
    assert json.loads(c.text("x")[6:])["choices"][0]["text"] == "x"
    cfg = load(ServeConfig, None, ["max_batch_size=4", "batch_wait_timeout_s=0.02"])
    assert (cfg.max_batch_size, cfg.batch_wait_timeout_s) == (4, 0.02)
    with pytest.raises(ConfigError, match="max_ongoing_requests"):
        load(ServeConfig, None, ["max_batch_size=64", "max_ongoing_requests=8"])


def test_continuous_batching_joins_give_the_answer_each_request_gets_alone(eng):
    """Issue 20 item 2 (continuous batching): requests taken into a RUNNING batch between decode
    steps (their prompts prefilled and their KV caches joined, finished rows dropped) answer
    exactly as they do alone; max_rows caps the rows; a request for another adapter is not
    joined (take filters by group key) and runs after; every job reaches done() once."""
    e, (h1, h2) = eng
    reqs = [(h1, _req(p, k, m)) for p in PROMPTS for k, m in (("chat", 12), ("completion", 7))]
    alone = [e.generate(h, r) for h, r in reqs]
    jobs = [e.prepare(h, r) for h, r in reqs]
    first, later = jobs[:2], jobs[2:]
    other = e.prepare(h2, _req(PROMPTS[0], "chat", 6))
    queue = list(later) + [other]
    taken_at: list[tuple[int, int]] = []
    got: dict[int, dict] = {}
    calls = {"n": 0}

    def take(key, n):
        calls["n"] += 1
        out = []
        while queue and len(out) < min(n, 2) and calls["n"] % 3 == 0:  # join two every third step
            if queue[0].group_key(0) != key:
                break
            out.append(queue.pop(0))
        taken_at.append((calls["n"], len(out)))
        return out

    def done(j, r):
        assert id(j) not in got
        got[id(j)] = r

    before = e.stats["max_batch"]
    e.stats["max_batch"] = 0
    res = e.run_batch(first, take, done, max_rows=3)
    assert res == alone[:2]
    assert [got[id(j)] for j in jobs] == alone  # joined rows: same answers as alone
    assert sum(n for _, n in taken_at) == len(later)
    assert e.stats["max_batch"] == 3  # never more rows than max_rows
    assert queue == [other]  # another adapter's request is left for the next batch
    assert e.run_batch(queue) == [e.generate(h2, _req(PROMPTS[0], "chat", 6))]
    e.stats["max_batch"] = max(before, e.stats["max_batch"])


def test_continuous_batching_streams_and_cancels_one_row(eng):
    e, (h1, _) = eng
    want = e.generate(h1, _req(PROMPTS[1], "completion", 30))
    events: list = []
    cancel = threading.Event()

    def on_event(kind, x):
        events.append((kind, x))
        if kind == "text" and len(events) == 3:
            cancel.set()  # the client went away after 3 pieces

    stream = e.prepare(h1, _req(PROMPTS[1], "completion", 30), on_event=on_event)
    quit_ = e.prepare(h1, _req(PROMPTS[2], "completion", 30), on_event=lambda k, x: None, cancel=cancel)
    got = {}
    out = e.run_batch([stream, quit_], lambda key, n: [], lambda j, r: got.__setitem__(id(j), r), max_rows=8)
    assert out[0] == want
    assert "".join(x for k, x in events if k == "text") == want["text"]
    assert events[-1] == ("end", want)
    assert out[1]["completion_tokens"] < 30  # stopped early, the other row went on
