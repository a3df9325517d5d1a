"""Pure tests (no Ray): every user format reads into the one schema; bad rows become
rejects with file, line and reason; rows in = kept + rejected; deterministic split."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayft.data.formats import DataError, read_file, read_pairs
from rayft.data.records import PAIR_COLUMNS, content_hash, split_of
from rayft.data.tokenize import IGNORE, encode_pair, prompt_text
from rayft.models.load import load_tokenizer

SUB = {"original_subtitles": [{"start": 0, "end": 3, "text": "He opens the door."},
                              {"start": 3, "end": 6.5, "text": "Nobody is there."}],
       "viral_subtitles": [{"start": 0, "end": 1.5, "text": "He opens!"}],
       "metadata": {"source": "drama_01", "quality": "high", "language": "en"}}


def _jsonl(path, recs):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in recs),
                    encoding="utf-8")
    return path


def test_each_format_detected_and_normalized(tmp_path):
    files = {
        "subtitle": _jsonl(tmp_path / "s.jsonl", [SUB]),
        "prompt_response": _jsonl(tmp_path / "p.jsonl", [{"prompt": "hi there", "response": "hello!"}]),
        "alpaca": tmp_path / "a.json",
        "sharegpt": _jsonl(tmp_path / "g.jsonl", [{"conversations": [
            {"from": "system", "value": "be brief"}, {"from": "human", "value": "q1"},
            {"from": "gpt", "value": "a1"}, {"from": "human", "value": "你好吗"}, {"from": "gpt", "value": "我很好"}]}]),
    }
    files["alpaca"].write_text(json.dumps([{"instruction": "Translate", "input": "cat", "output": "猫"}]))
    for fmt, path in files.items():
        res = read_file(str(path))
        assert len(res.rows) == 1 and not res.rejects, (fmt, res.rejects)
        row = res.rows[0]
        assert row["format"] == fmt and set(PAIR_COLUMNS) <= set(row)
    sub = read_file(str(files["subtitle"])).rows[0]
    # timings survive into the training text and the metadata
    assert "[0-3] He opens the door.\n[3-6.5] Nobody is there." in sub["prompt"]
    assert sub["response"] == "[0-1.5] He opens!" and sub["language"] == "en"
    assert json.loads(sub["meta"])["viral_subtitles"][0]["end"] == 1.5
    g = read_file(str(files["sharegpt"])).rows[0]
    assert g["system"] == "be brief" and g["prompt"] == "你好吗" and g["response"] == "我很好"
    assert json.loads(g["history"]) == [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
    assert g["language"] == "zh"  # detected: no metadata.language
    assert read_file(str(files["alpaca"])).rows[0]["prompt"] == "Translate\n\ncat"


def test_parquet_with_format_columns(tmp_path):
    p = tmp_path / "x.parquet"
    pq.write_table(pa.table({"instruction": ["a", "b", ""], "output": ["x", "y", "z"]}), p)
    res = read_pairs(str(p))
    assert len(res.rows) == 2 and len(res.rejects) == 1
    assert res.rejects[0]["line"] == 3 and "instruction" in res.rejects[0]["reason"]


def test_bad_rows_rejected_with_reason(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = {"prompt": "p", "response": "r"}
    lines = [json.dumps(good), "{not json", json.dumps({"prompt": "p"}), json.dumps({"prompt": 3, "response": "r"}),
             json.dumps({"prompt": "  ", "response": "r"}), json.dumps(good | {"prompt": "p2"})]
    data = ("\n".join(lines) + "\n").encode() + b'{"prompt": "\xff\xfe", "response": "r"}\n'
    path.write_bytes(data)
    res = read_pairs(str(path))
    assert res.rows_read == 7 == len(res.rows) + len(res.rejects)
    assert len(res.rows) == 2
    reasons = {r["line"]: r["reason"] for r in res.rejects}
    assert "malformed JSON" in reasons[2]
    assert "'response' is missing" in reasons[3]
    assert "must be a string" in reasons[4]
    assert "'prompt' is empty" in reasons[5]
    assert "UTF-8" in reasons[7]
    assert all(r["file"] == str(path) for r in res.rejects)

    sub_bad = dict(SUB, original_subtitles=[{"start": "zero", "end": 3, "text": "x"}])
    res = read_file(str(_jsonl(tmp_path / "s.jsonl", [SUB, sub_bad])))
    assert len(res.rows) == 1 and "original_subtitles[0].start must be a number" in res.rejects[0]["reason"]


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_pairs(str(tmp_path / "missing.jsonl"))
    empty = tmp_path / "e.jsonl"
    empty.write_text("{oops\n")
    with pytest.raises(DataError, match="no valid rows; first problem at line 1"):
        read_pairs(str(empty))
    with pytest.raises(DataError, match="unknown format"):
        read_file(str(_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "response": "b"}])), "csv")
    with pytest.raises(DataError, match="matches no files"):
        read_pairs(str(tmp_path / "*.parquet"))


def test_split_is_deterministic_by_content():
    hashes = [content_hash("", "", f"prompt {i}", f"resp {i}") for i in range(2000)]
    a = [split_of(h, 0.1, "0") for h in hashes]
    assert a == [split_of(h, 0.1, "0") for h in hashes]
    assert 140 < a.count("val") < 260
    # whitespace/NFKC-insensitive: the same content lands in the same split
    assert content_hash("", "", "a  b", "ｃ") == content_hash("", "", "a b", "c")


@pytest.mark.parametrize("text", ["Turn this into a hook: the detective opens the letter.", "把这句话改成爆款：侦探打开了信。"])
def test_loss_only_on_response_tokens(text):
    tok = load_tokenizer("tiny-qwen2")
    ids, labels, trunc = encode_pair(tok, "", "", text, "A punchy answer! 爆款!", 512)
    p_len = len(tok(prompt_text(tok, "", "", text), add_special_tokens=False)["input_ids"])
    assert not trunc and labels[:p_len] == [IGNORE] * p_len
    assert labels[p_len:] == ids[p_len:] and ids[-1] == tok.eos_token_id
    assert tok.unk_token_id not in ids  # the shipped tokenizer covers English and Chinese
    assert "爆款" in tok.decode(ids[p_len:])
    ids2, labels2, trunc2 = encode_pair(tok, "", "", text * 20, "short answer", 32)
    assert trunc2 and len(ids2) == 32 and any(x != IGNORE for x in labels2)


def test_checkpoint_optimizer_roundtrip_is_exact(tmp_path):
    import torch

    from rayft.train import checkpoint as ck

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    for _ in range(3):
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
        sched.step()
    ck.save_training_state(tmp_path, opt, sched, {"step": 3})
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0 / (s + 1))
    state = ck.load_training_state(tmp_path, opt2, sched2)
    assert state["step"] == 3 and sched2.get_last_lr() == sched.get_last_lr()
    for a, b in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.bin"))  # nothing pickled
