"""The data phase of `rayft train` without Ray (datasets.prepare with the in-process reader):
data.language applies to the training rows AND to data.val_path's rows, and is accounted."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayft.config import load
from rayft.data.formats import DataError, read_pairs
from rayft.train.config import TrainConfig
from rayft.train.datasets import prepare


def _pairs(path: Path, n_en: int, n_zh: int) -> Path:
    rows = [{"prompt": f"Rewrite line {i}: the detective opens the red letter.", "response": f"Detective {i} opens it!"}
            for i in range(n_en)]
    rows += [{"prompt": f"把第{i}句话改写成短视频标题：我姐姐悄悄藏起了那扇木门。", "response": f"我姐姐{i}悄悄藏起了！"}
             for i in range(n_zh)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _cfg(tmp_path: Path, *overrides: str) -> TrainConfig:
    return load(TrainConfig, None, [f"run.dir={tmp_path}", "scaling.num_workers=1", "train.batch_size=2",
                                    "data.format=prompt_response", *overrides])


def test_language_applies_to_val_path_rows(tmp_path):
    train, val = _pairs(tmp_path / "train.jsonl", 6, 4), _pairs(tmp_path / "val.jsonl", 3, 5)
    p = prepare(_cfg(tmp_path, f"data.path={train}", f"data.val_path={val}", "data.language=en"),
                read=read_pairs, source="tiny-qwen2")
    assert p.train_table.num_rows == 6 and set(p.train_table.column("language").to_pylist()) == {"en"}
    assert p.val_table.num_rows == 3 and set(p.val_table.column("language").to_pylist()) == {"en"}
    assert p.stats["train_rows"] == 6 and p.stats["val_rows"] == 3
    assert p.stats["rows_other_language"] == 4 + 5 and p.stats["rows_rejected"] == 9
    assert p.stats["rows_read"] == 6 + 4 + 3 + 5  # every row read is kept or rejected
    val_rejects = [r for r in p.read.rejects if r["file"] == str(val)]
    assert len(val_rejects) == 5 and all("data.language" in r["reason"] for r in val_rejects)
    # without data.language nothing is dropped
    p = prepare(_cfg(tmp_path, f"data.path={train}", f"data.val_path={val}"), read=read_pairs, source="tiny-qwen2")
    assert (p.stats["train_rows"], p.stats["val_rows"], p.stats["rows_other_language"]) == (10, 8, 0)


def test_language_without_val_path_and_val_path_without_that_language(tmp_path):
    train = _pairs(tmp_path / "train.jsonl", 20, 10)
    p = prepare(_cfg(tmp_path, f"data.path={train}", "data.language=zh", "data.val_fraction=0.3"),
                read=read_pairs, source="tiny-qwen2")
    assert p.stats["train_rows"] + p.stats["val_rows"] == 10 and p.stats["rows_other_language"] == 20
    assert set(p.val_table.column("language").to_pylist()) <= {"zh"}
    val = _pairs(tmp_path / "val.jsonl", 4, 0)
    with pytest.raises(DataError, match="no rows of that language in .*val.jsonl"):
        prepare(_cfg(tmp_path, f"data.path={train}", f"data.val_path={val}", "data.language=zh"),
                read=read_pairs, source="tiny-qwen2")
