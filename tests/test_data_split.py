"""Minimum validation rows per language (curate -> train hand-off: 75 zh rows at 5 % gave a
0-1 row validation set silently)."""
from __future__ import annotations

from rayft.data.records import content_hash, ensure_min_val, split_of


def _rows(lang: str, n: int) -> list[dict]:
    return [{"system": "", "history": "", "prompt": f"{lang} prompt {i}", "response": f"r{i}", "language": lang}
            for i in range(n)]


def _split(rows, frac=0.05, salt="0"):
    train, val = [], []
    for r in rows:
        (val if split_of(content_hash(r["system"], r["history"], r["prompt"], r["response"]), frac, salt) == "val"
         else train).append(r)
    return train, val


def test_min_val_rows_per_language():
    rows = _rows("en", 2000) + _rows("zh", 75) + _rows("ja", 6)
    train, val = _split(rows, salt="2")
    assert sum(1 for r in val if r["language"] == "zh") == 4  # what the 5 % hash split gives
    t0, v0, notes0 = ensure_min_val(train, val, 0, "2")
    assert (t0, v0) == (train, val)  # 0: only warnings
    assert sum(1 for n in notes0 if "'zh'" in n or "'ja'" in n) == 2 and not any("'en'" in n for n in notes0)
    t, v, notes = ensure_min_val(train, val, 10, "2")
    by = {lang: sum(1 for r in v if r["language"] == lang) for lang in ("en", "zh", "ja")}
    assert by["zh"] == 10 and by["ja"] == 3 and by["en"] == sum(1 for r in val if r["language"] == "en") > 10
    assert len(t) + len(v) == len(rows) and not {r["prompt"] for r in t} & {r["prompt"] for r in v}
    assert {r["prompt"] for r in val} <= {r["prompt"] for r in v}  # the hash split's rows stay in val
    assert [n for n in notes if "'ja'" in n] and not [n for n in notes if "'zh'" in n]
    # deterministic: the same rows move again
    assert ensure_min_val(train, val, 10, "2")[1] == v
