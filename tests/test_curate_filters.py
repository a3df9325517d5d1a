"""Per-row filters (pure, no Ray): normalize, low-value, language; reader chunking."""
from __future__ import annotations

import json
import random

import pytest

from rayft.config import load
from rayft.curate import filters as F
from rayft.curate.config import CurateConfig, LanguageCfg, LowValueCfg, NormalizeCfg
from rayft.data.reader import WORK_COLUMNS, plan_file, read_task
from rayft.testing.pairs import PairGenerator
from rayft.data.records import detect_language


def _batch(rows: list[dict]) -> dict:
    b = {c: [] for c in WORK_COLUMNS}
    for r in rows:
        for c in WORK_COLUMNS:
            b[c].append(r.get(c, False if c == "_golden" else ""))
    return b


def test_normalize_str():
    cfg = NormalizeCfg()
    assert F.normalize_str("Ｈｅｌｌｏ，　ｗｏｒｌｄ！１２３", cfg) == "Hello, world!123"
    assert F.normalize_str("a\u200bb\ufeffc\x07d", cfg) == "abcd"
    assert F.normalize_str("  one \t two  \r\n\n\n\n three  ", cfg) == "one two\n\nthree"
    assert F.normalize_str("line1\nline2", cfg) == "line1\nline2"  # newlines survive (subtitle cues)
    assert F.normalize_str("Ｈｉ  there", NormalizeCfg(nfkc=False, whitespace=False)) == "Ｈｉ  there"


def test_normalize_batch_empty_rows_and_timings():
    bad_meta = json.dumps({"viral_subtitles": [{"start": 0, "end": 2, "text": "a"}, {"start": 3, "end": 3, "text": "b"}]})
    neg_meta = json.dumps({"original_subtitles": [{"start": -1, "end": 2, "text": "a"}]})
    order_meta = json.dumps({"original_subtitles": [{"start": 5, "end": 6, "text": "a"}, {"start": 1, "end": 2, "text": "b"}]})
    ok_meta = json.dumps({"original_subtitles": [{"start": 0, "end": 2, "text": "a"}, {"start": 2, "end": 4, "text": "b"}]})
    b = _batch([
        {"prompt": "  \u200b ", "response": "x"},
        {"prompt": "p", "response": "\u3000"},
        {"prompt": "p", "response": "r", "format": "subtitle", "meta": bad_meta},
        {"prompt": "p", "response": "r", "format": "subtitle", "meta": neg_meta},
        {"prompt": "p", "response": "r", "format": "subtitle", "meta": order_meta},
        {"prompt": "p", "response": "r", "format": "subtitle", "meta": ok_meta},
        {"prompt": "Ｐ  ", "response": "ｒ", "history": json.dumps([{"role": "user", "content": "ｈｉ  "}])},
    ])
    out = F.normalize_batch(b, NormalizeCfg())
    assert out["_filter"] == ["normalize"] * 5 + ["", ""]
    assert out["_reason"][0] == "prompt is empty after normalization"
    assert out["_reason"][1] == "response is empty after normalization"
    assert out["_reason"][2] == "viral_subtitles[1]: start 3 is not before end 3"
    assert "negative time" in out["_reason"][3]
    assert "before the previous cue" in out["_reason"][4]
    assert (out["prompt"][6], out["response"][6]) == ("P", "r")
    assert json.loads(out["history"][6])[0]["content"] == "hi"
    assert len(out["_filter"]) == len(b["_filter"])


@pytest.mark.parametrize("reply", ["ok", "OK!", "Okay.", "ok ok", "thanks!!", "Thank you.", "haha", "hmm...",
                                   "好的", "好的。", "嗯", "嗯嗯嗯", "收到！", "哈哈哈", "谢谢"])
def test_low_value_listed_replies(reply):
    cfg = LowValueCfg()
    assert F.low_value_reason("How are you doing today?", reply, cfg, F.low_value_list(cfg)).startswith("low-value")


def test_low_value_other_rules():
    cfg = LowValueCfg()
    listed = F.low_value_list(cfg)
    why = lambda p, r, c=cfg: F.low_value_reason(p, r, c, F.low_value_list(c))  # noqa: E731
    assert why("q?", "👍👍") == "reply has only punctuation, symbols or emoji"
    assert why("q?", "..." * 40) == "reply has only punctuation, symbols or emoji"
    assert why("q?", "x") == "reply shorter than 2 letters/digits"
    assert why("Tell me about the moon.", "tell me about the moon") == "reply copies the prompt"
    assert why("Repeat: the quick brown fox jumps over the dog", "the quick brown fox jumps over the dog") == \
        "reply copies the prompt"
    assert why("Translate to French: the quick brown fox", "the quick brown fox") is None  # < copy_ratio
    long_p = "Please repeat this long sentence about rivers and mountains and the sea, word for word."
    assert why(long_p, long_p + "!") == "reply copies the prompt"
    assert why("What is 6 x 7?", "42") is None
    assert why("Capital of France?", "Paris is the capital of France.") is None
    assert why("请介绍一下长城。", "长城是中国古代的军事防御工程。") is None
    assert F.low_value_reason("q", "ok", LowValueCfg(replies_en=[], replies_zh=[]), frozenset()) is None
    assert why("q?", "x", LowValueCfg(min_chars=1)) is None
    assert "ok" in listed and "好的" in listed
    b = _batch([{"prompt": "q", "response": "ok"}, {"prompt": "q", "response": "a real answer"}])
    assert F.low_value_batch(b, cfg)["_filter"] == ["low_value", ""]
    assert F.low_value_batch(b, LowValueCfg(enabled=False)) is b


def test_language_routing_metadata_wins_then_detection():
    b = _batch([
        {"prompt": "hello there", "response": "general kenobi", "language": "zh-CN"},
        {"prompt": "你好", "response": "你好，很高兴认识你", "language": "und"},
        {"prompt": "hello", "response": "world", "language": ""},
        {"prompt": "bonjour", "response": "le monde", "language": "fr"},
        {"prompt": "x", "response": "y", "language": "English"},
    ])
    out = F.language_batch(b, LanguageCfg())
    assert out["language"] == ["zh", "zh", "en", "fr", "en"] and out["_filter"] == [""] * 5
    out = F.language_batch(b, LanguageCfg(keep=["en", "zh"]))
    assert out["_filter"] == ["", "", "", "language", ""]
    assert out["_reason"][3] == "language 'fr' not in language.keep ['en', 'zh']"


def _language_per_char(text: str, threshold: float = 0.2) -> str:
    """The rule spelled out one character at a time (str.isalpha letters, CJK ranges)."""
    cjk = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0xF900, 0xFAFF), (0x3040, 0x30FF), (0xAC00, 0xD7AF))
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return "und"
    n = sum(1 for c in letters if any(lo <= ord(c) <= hi for lo, hi in cjk))
    return "zh" if n / len(letters) >= threshold else "en"


def test_language_detection_matches_the_per_character_rule():
    g, r = PairGenerator(3), random.Random(1)
    texts = [g.text(r.choice(["en", "zh"]), 1, 2) + " " + g.text("en", 0, 1) for _ in range(500)]
    texts += ["", "123 !!", "ab 中文", "ｶﾀｶﾅ", "한국어 text", "・・・ab", "Ⅷ abc 中", "ﾟ", "²³ 中", "é中ab",
              "a\u0301中文", "𠀀𠀁 abcdefgh", "ｱ ab", "中文" + "x" * 8, "中文" + "x" * 7]
    got = [detect_language(t) for t in texts]
    assert got == [_language_per_char(t) for t in texts]
    assert got[-2:] == ["zh", "zh"] and detect_language("中" + "x" * 4) == "zh" and detect_language("中" + "x" * 5) == "en"


def test_row_filters_keep_row_count_and_removed_rows_untouched():
    cfg = load(CurateConfig, None, ["data.path=x", "output.dir=y"])
    b = _batch([{"prompt": "q", "response": "ok"}, {"prompt": "q", "response": "pwd=abc123"},
                {"prompt": "q", "response": "a fine answer"}, {"prompt": "q", "response": "ok", "_filter": "read",
                                                               "_reason": "malformed JSON"}])
    out = F.apply_row_filters(b, cfg)
    assert out["_filter"] == ["low_value", "secrets", "", "read"]
    assert out["_reason"][3] == "malformed JSON"
    hashes, texts, sig = F.dedup_keys(out, cfg)
    assert hashes[0] == "" and hashes[2] and texts[2] == "q a fine answer"
    assert len(sig) == 4 and sig.type.list_size == cfg.dedup.bands * cfg.dedup.rows


def test_reader_chunks_large_jsonl_with_correct_line_numbers(tmp_path):
    p = tmp_path / "big.jsonl"
    lines = []
    for i in range(1, 401):
        if i == 57:
            lines.append('{"prompt": "broken",')
        elif i == 58:
            lines.append("")
        else:
            lines.append(json.dumps({"id": f"r{i}", "prompt": f"question {i}", "response": f"answer number {i}"}))
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tasks = plan_file(str(p), "auto", chunk_bytes=2000)
    assert len(tasks) > 5 and all(t["fmt"] == "prompt_response" for t in tasks)
    rows = {}
    for t in tasks:
        b = read_task(t)
        for k in range(len(b["line"])):
            assert b["line"][k] not in rows
            rows[b["line"][k]] = (b["id"][k], b["_filter"][k], b["_reason"][k])
    assert len(rows) == 399 and 58 not in rows
    assert rows[57][1] == "read" and rows[57][2].startswith("malformed JSON")
    assert all(rows[i][0] == f"r{i}" for i in rows if i != 57)


def test_reader_reports_unreadable_file(tmp_path):
    bad = tmp_path / "corrupt.parquet"
    bad.write_bytes(b"not a parquet file")
    b = read_task(plan_file(str(bad))[0])
    assert b["_filter"] == ["read"] and b["line"] == [0] and "unreadable" in b["_reason"][0]
    gone = read_task({"path": str(tmp_path / "missing.jsonl"), "fmt": "auto", "golden": False, "start": 0,
                      "end": 10, "first_line": 1})
    assert gone["_filter"] == ["read"] and gone["_reason"][0].startswith("unreadable file")
