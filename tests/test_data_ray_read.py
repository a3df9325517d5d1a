"""Ray Data reading of pair files (what `rayft train` and `rayft sweep` use): the same rows,
rejects and order as the in-process reader, with big JSONL files split into byte ranges."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayft.data.formats import DataError, check_pairs, read_pairs
from rayft.data.ray_read import read_pairs_ray

pytestmark = pytest.mark.ray


def _dataset(tmp_path):
    d = tmp_path / "pairs"
    d.mkdir()
    lines = []
    for i in range(600):
        if i % 97 == 5:
            lines.append("{broken json")
        elif i % 89 == 7:
            lines.append(json.dumps({"prompt": "", "response": "empty prompt"}))
        elif i % 2:
            lines.append(json.dumps({"prompt": f"question {i}", "response": f"answer {i}"}))
        else:
            lines.append(json.dumps({"prompt": f"问题 {i} 是什么", "response": f"答案 {i}"}, ensure_ascii=False))
    big = d / "a_big.jsonl"
    big.write_bytes(("\n".join(lines) + "\n").encode() + b'{"prompt": "\xff", "response": "r"}\n\n')
    (d / "b_alpaca.json").write_text(json.dumps([{"instruction": "Translate", "input": "cat", "output": "猫"},
                                                 {"instruction": "Sum", "output": 3}]))
    pq.write_table(pa.table({"conversations": [[{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}],
                                               [{"from": "gpt", "value": "no user turn"}]]}), d / "c.parquet")
    return d, big


def test_ray_read_matches_in_process_reader(ray_session, tmp_path):
    d, big = _dataset(tmp_path)
    local = read_pairs(str(d))
    # 4 KB ranges: the 600-line file is read by ~10 tasks, each starting mid-file
    res = read_pairs_ray(str(d), chunk_bytes=4096)
    assert res.rows == local.rows  # same canonical rows (language detected), same (file, line) order
    assert res.rejects == local.rejects  # same file, line, reason and record
    assert res.files == local.files
    assert res.rows_read == 600 + 1 + 2 + 2 == len(res.rows) + len(res.rejects)
    reasons = {(r["file"], r["line"]): r["reason"] for r in res.rejects}
    assert "malformed JSON" in reasons[(str(big), 6)] and "UTF-8" in reasons[(str(big), 601)]
    assert "'prompt' is empty" in reasons[(str(big), 8)]
    assert {r["language"] for r in res.rows if r["file"] == str(big)} == {"en", "zh"}
    assert [r["line"] for r in res.rows if r["file"] == str(big)] == sorted(
        r["line"] for r in res.rows if r["file"] == str(big))


def test_file_level_problems_raise_before_any_task(tmp_path):
    """No Ray needed: check_pairs is the driver-side gate read_pairs_ray runs first."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{nope\n" + json.dumps({"prompt": "only a prompt"}) + "\n")
    with pytest.raises(DataError, match=r"no valid rows; first problem at line 1: malformed JSON"):
        check_pairs(str(bad))
    with pytest.raises(DataError, match="file not found"):
        check_pairs(str(tmp_path / "missing.jsonl"))
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    with pytest.raises(DataError, match="unknown format 'csv'"):
        check_pairs(str(good), "csv")
    assert check_pairs(str(good)) == {str(good): "alpaca"}


def test_ray_read_tool_calls_and_datasets_folder(ray_session, tmp_path):
    """Tool-calling files (both layouts) and a save_to_disk folder read by Ray Data tasks
    give the in-process reader's rows (messages, tools) and rejects."""
    datasets = pytest.importorskip("datasets")
    from test_data_toolcalls import _jsonl, openai_rows, sharegpt_rows

    d = tmp_path / "mixed"
    d.mkdir()
    _jsonl(d / "a.jsonl", sharegpt_rows())
    _jsonl(d / "b.jsonl", openai_rows())
    chat = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(5)]
    datasets.Dataset.from_list(chat).save_to_disk(str(d / "hf"))
    local = read_pairs(str(d))
    res = read_pairs_ray(str(d), chunk_bytes=512)
    assert res.rows == local.rows and res.rejects == local.rejects and res.files == local.files
    assert res.rows_read == 11 + 11 + 5 == len(res.rows) + len(res.rejects)
    assert sum(1 for r in res.rows if r["messages"]) == 4 and any(f.endswith(".arrow") for f in res.files)
