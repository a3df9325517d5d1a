"""`rayft data inspect`: formats per file, rows read = kept + rejected, rejects grouped by
reason, token lengths as training renders them, truncation count and the histogram PNG."""
from __future__ import annotations

import json

import pytest

from rayft.config import ConfigError, load
from rayft.data.inspect import InspectConfig, reason_kind, run_inspect
from rayft.data.tokenize import encode_row
from rayft.models.load import load_tokenizer
from test_data_toolcalls import _jsonl, openai_rows, sharegpt_rows


@pytest.fixture
def data(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    _jsonl(d / "a_tools.jsonl", sharegpt_rows())
    _jsonl(d / "b_chat.jsonl", openai_rows())
    long = [{"instruction": "Summarise: " + "words " * (50 * (i % 4)), "output": f"summary {i}"} for i in range(20)]
    (d / "c_alpaca.json").write_text(json.dumps(long + [{"instruction": "", "output": "x"},
                                                        {"instruction": "", "output": "y"}]))
    return d


def test_inspect_reports_what_training_would_do(data, tmp_path, capsys):
    out = run_inspect(InspectConfig(path=str(data), max_seq_len=128, out=str(tmp_path / "insp")))
    printed = capsys.readouterr().out.strip().splitlines()
    assert out == str(tmp_path / "insp")  # the CLI prints it last
    rep = json.loads((tmp_path / "insp" / "inspect.json").read_text())
    files = {p.rsplit("/", 1)[-1]: f for p, f in rep["files"].items()}
    assert {k: f["format"] for k, f in files.items()} == {"a_tools.jsonl": "sharegpt", "b_chat.jsonl": "openai",
                                                           "c_alpaca.json": "alpaca"}
    assert rep["rows_read"] == 11 + 11 + 22 == rep["rows_kept"] + rep["rows_rejected"]
    assert rep["rows_kept"] == 3 + 3 + 20 and rep["rows_with_tools"] == 4
    for f in files.values():
        assert f["read"] == f["kept"] + f["rejected"] == f["kept"] + sum(r["rows"] for r in f["rejects_by_reason"])
    alpaca = files["c_alpaca.json"]["rejects_by_reason"]
    assert alpaca == [{"reason": "field 'instruction' is empty", "rows": 2, "first_line": 21}]
    # lengths are exactly what training tokenizes (no truncation at inspection)
    tok = load_tokenizer("tiny-qwen2")
    from rayft.data.formats import read_pairs
    rows = read_pairs(str(data)).rows
    want = sorted(len(encode_row(tok, r["system"], r["history"], r["prompt"], r["response"], 1 << 30,
                                 r["messages"], r["tools"])[0]) for r in rows)
    assert rep["tokens"]["max"] == want[-1] and rep["tokens"]["min"] == want[0]
    assert rep["rows_truncated"] == sum(1 for n in want if n > 128) > 0
    assert any(f"truncates {rep['rows_truncated']} rows" in line for line in printed)
    png = (tmp_path / "insp" / "token_lengths.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_reason_kinds_group_positions():
    assert reason_kind("conversations[3]: unknown role 'robot'") == "conversations[i]: unknown role 'robot'"
    assert reason_kind("malformed JSON: Expecting value at column 7") == "malformed JSON: Expecting value"


def test_inspect_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="path: required"):
        run_inspect(InspectConfig())
    with pytest.raises(ConfigError, match="train_on"):
        run_inspect(load(InspectConfig, None, ["path=x", "train_on=every"]))


def test_cli_data_inspect(data, tmp_path, capsys):
    from rayft.cli import main

    rc = main(["data", "inspect", f"path={data}/b_chat.jsonl", "max_seq_len=64", "train_on=all_assistant",
               f"out={tmp_path / 'o'}"])
    out = capsys.readouterr()
    assert rc == 0 and out.out.strip().splitlines()[-1] == str(tmp_path / "o")
    assert "openai, 11 rows read, 3 kept, 8 rejected" in out.out
    rc = main(["data", "inspect", f"path={tmp_path / 'missing.jsonl'}"])
    assert rc == 2 and "file not found" in capsys.readouterr().err
