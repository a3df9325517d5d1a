"""Fuzz: the pair-file readers (data/formats.py and the curate/train task reader) on random
bytes, truncated JSON, wrong types per field and huge lines (hypothesis, bounded, no Ray).

Invariants: reading never raises (a bad row is a reject; ``check_file`` may raise only the
one-line ``DataError``), and every record read is accounted for: rows kept + rejected =
records read (non-blank lines for JSON Lines).
"""
from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from rayft.data.formats import DataError, check_file, read_file
from rayft.data.reader import plan_file, read_task

SETTINGS = settings(max_examples=70, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
COUNTS: dict[str, int] = {}

_scalar = st.none() | st.booleans() | st.integers(-2**80, 2**80) | st.floats() | st.text(max_size=30)
_json = st.recursive(_scalar, lambda k: st.lists(k, max_size=4) | st.dictionaries(st.text(max_size=8), k, max_size=4),
                     max_leaves=10)
_cue = st.fixed_dictionaries({"start": _json | st.floats(0, 100), "end": _json | st.floats(0, 100), "text": _json})
# one valid-looking record per format, each field drawn from "right type" or "anything"
_RECORDS = {
    "prompt_response": st.fixed_dictionaries({"prompt": st.text(max_size=20) | _json,
                                              "response": st.text(max_size=20) | _json},
                                             optional={"system": _json, "history": _json, "language": _json}),
    "alpaca": st.fixed_dictionaries({"instruction": st.text(max_size=20) | _json, "output": st.text(max_size=20) | _json},
                                    optional={"input": _json}),
    "sharegpt": st.fixed_dictionaries({"conversations": st.lists(st.fixed_dictionaries(
        {"from": st.sampled_from(["human", "gpt", "system", "function_call", "observation", "x"]) | _json,
         "value": st.text(max_size=20) | _json}), max_size=5) | _json}, optional={"tools": _json}),
    "openai": st.fixed_dictionaries({"messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "tool"]) | _json,
         "content": st.text(max_size=20) | _json},
        optional={"tool_calls": _json, "tool_call_id": _json, "function_call": _json}), max_size=5) | _json},
        optional={"tools": _json}),
    "subtitle": st.fixed_dictionaries({"original_subtitles": st.lists(_cue, max_size=3) | _json,
                                       "viral_subtitles": st.lists(_cue, max_size=3) | _json},
                                      optional={"metadata": _json}),
}


def _line(rec) -> bytes:
    return json.dumps(rec, allow_nan=True).encode()


_lines = st.one_of(
    st.one_of(*_RECORDS.values()).map(_line),
    _json.map(_line),
    st.binary(max_size=60).map(lambda b: b.replace(b"\n", b" ")),
    st.tuples(st.one_of(*_RECORDS.values()).map(_line), st.floats(0, 1)).map(lambda t: t[0][:int(len(t[0]) * t[1])]),
    st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass").replace(b"\n", b" ")),
)


def _expected_jsonl(data: bytes) -> int:
    return sum(1 for raw in data.split(b"\n") if raw.strip())


def _check_read(path: Path, surface: str, expected: int | None) -> None:
    COUNTS[surface] = COUNTS.get(surface, 0) + 1
    for fmt in ("auto", "prompt_response", "openai"):
        res = read_file(str(path), fmt)
        n = len(res.rows) + len(res.rejects)
        assert res.files[str(path)]["read"] == n
        if expected is not None:
            assert n == expected, (fmt, n, expected)
        for rej in res.rejects:
            assert isinstance(rej["reason"], str) and rej["reason"] and "\n" not in rej["reason"], rej["reason"]
        try:
            check_file(str(path), fmt)
        except DataError as e:
            assert "\n" not in str(e)
    # the task reader curate and train use (byte-range tasks for JSON Lines)
    total = 0
    for task in plan_file(str(path), "auto", chunk_bytes=64):
        b = read_task(task)
        total += len(b["_filter"])
        assert all(isinstance(r, str) for r in b["_reason"])
    if expected is not None:
        assert total == expected, (total, expected)


@SETTINGS
@given(lines=st.lists(_lines, min_size=1, max_size=12))
def test_jsonl_mixed_records(tmp_path_factory, lines):
    p = tmp_path_factory.mktemp("fz") / "pairs.jsonl"
    data = b"\n".join(lines) + b"\n"
    p.write_bytes(data)
    _check_read(p, "jsonl: records / wrong types / truncated / random lines", _expected_jsonl(data))


@SETTINGS
@given(data=st.binary(max_size=400))
def test_random_bytes(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("fz")
    p = d / "pairs.jsonl"
    p.write_bytes(data)
    _check_read(p, "random bytes (.jsonl)", _expected_jsonl(data))
    for suffix in (".json", ".parquet", ".arrow"):
        q = d / f"pairs{suffix}"
        q.write_bytes(data)
        _check_read(q, f"random bytes ({suffix})", None)


@SETTINGS
@given(doc=st.one_of(st.lists(st.one_of(*_RECORDS.values()), max_size=6), _json, st.one_of(*_RECORDS.values())))
def test_json_documents(tmp_path_factory, doc):
    p = tmp_path_factory.mktemp("fz") / "pairs.json"
    p.write_text(json.dumps(doc, allow_nan=True))
    _check_read(p, "json documents", len(doc) if isinstance(doc, list) else 1)


@settings(max_examples=3, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(size=st.sampled_from([1 << 20, 2 << 20]), kind=st.sampled_from(["string", "nested", "garbage"]))
def test_huge_lines(tmp_path_factory, size, kind):
    p = tmp_path_factory.mktemp("fz") / "pairs.jsonl"
    if kind == "string":
        big = _line({"prompt": "p" * size, "response": "r"})
    elif kind == "nested":
        big = b'{"prompt": ' + b"[" * 100000 + b"]" * 100000 + b', "response": "x"}'
    else:
        big = b"\xff{" * (size // 2)
    p.write_bytes(_line({"prompt": "q", "response": "a"}) + b"\n" + big + b"\n")
    _check_read(p, "huge lines (1-3 MiB, deep nesting)", 2)


def test_zz_report_counts():
    print("\nfuzz reader inputs:", json.dumps(COUNTS))
    assert sum(COUNTS.values()) >= 100
