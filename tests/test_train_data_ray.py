"""`rayft train`'s data phase inside Ray Data (issue 16 item 3): ``prepare`` keeps the rows in
the object store (the driver holds dataset refs, counts and rejects), and gives exactly the
split, row numbering and rejects of the driver implementation (``read=read_pairs``) on files
with bad rows, two languages, several read tasks per file, ``data.min_val_rows`` moves and
``data.val_path``; ``tokenized_datasets`` hands worker i the same rows every time."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayft.config import load
from rayft.data import ray_read
from rayft.data.formats import read_pairs
from rayft.train.config import TrainConfig
from rayft.train.datasets import prepare, tokenized_datasets

pytestmark = pytest.mark.ray


def _write(path: Path, n: int, seed: int, zh_every: int = 9) -> Path:
    lines = []
    for i in range(n):
        if i % 101 == 3:
            lines.append('{"prompt": "broken')
        elif i % 67 == 5:
            lines.append(json.dumps({"prompt": "", "response": "empty prompt"}))
        elif i % 211 == 7:
            lines.append(json.dumps({"prompt": "dup prompt", "response": "dup response"}))  # equal hashes
        elif i % zh_every == 0:
            lines.append(json.dumps({"prompt": f"把第{i}句改写成标题：姐姐藏起了木门 {seed}", "response": f"姐姐{i}藏起了！"},
                                    ensure_ascii=False))
        else:
            lines.append(json.dumps({"prompt": f"Rewrite line {i} of set {seed}: the detective opens the letter.",
                                     "response": f"Detective {i} opens it!"}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture()
def data(tmp_path, monkeypatch):
    d = tmp_path / "train"
    d.mkdir()
    _write(d / "a.jsonl", 900, 1)
    _write(d / "b.jsonl", 700, 2, zh_every=40)
    val = _write(tmp_path / "val.jsonl", 300, 3)
    monkeypatch.setattr(ray_read, "MIN_CHUNK_BYTES", 8192)  # ~10 read tasks per file: offsets matter
    return d, val


def _cfg(tmp_path: Path, *overrides: str) -> TrainConfig:
    return load(TrainConfig, None, [f"run.dir={tmp_path / 'run'}", "scaling.num_workers=2", "train.batch_size=2",
                                    "data.format=prompt_response", "data.max_seq_len=64", *overrides])


def _same(ray_p, drv_p):
    assert ray_p.train_table is None and ray_p.val_table is None and ray_p.read.rows == []  # nothing on the driver
    assert type(ray_p.train_split.ds).__name__ == "MaterializedDataset"
    for name, table in (("train", drv_p.train_table), ("val", drv_p.val_table)):
        got = ray_p.split(name).to_table()
        assert got.column_names == table.column_names
        assert got.to_pylist() == table.to_pylist(), name  # same rows, same row_idx
    assert ray_p.read.rejects == drv_p.read.rejects
    assert ray_p.stats == drv_p.stats


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("[rayft] warning")]


@pytest.mark.parametrize("extra", [
    ["data.val_fraction=0.05", "data.min_val_rows=12"],  # zh gets rows moved into validation
    ["data.val_fraction=0.02"],  # a warning: zh under 10 validation rows
    ["data.val_fraction=0.1", "data.language=en"],
    ["data.val_fraction=0"],
])
def test_ray_prepare_equals_driver_prepare(ray_session, data, tmp_path, extra, capsys):
    d, _ = data
    cfg = _cfg(tmp_path, f"data.path={d}", *extra)
    drv = prepare(cfg, read=read_pairs, source="tiny-qwen2")
    drv_err = _warnings(capsys.readouterr().err)
    p = prepare(cfg, source="tiny-qwen2")
    assert _warnings(capsys.readouterr().err) == drv_err  # the same min-val warnings
    _same(p, drv)
    zh_val = sum(1 for lang in drv.val_table.column("language").to_pylist() if lang == "zh")
    assert zh_val == 12 if "data.min_val_rows=12" in extra else True  # rows were moved
    assert bool(drv_err) == ("data.val_fraction=0.02" in extra)
    assert p.stats["rows_read"] == 900 + 700 == p.stats["rows_rejected"] + p.stats["train_rows"] + p.stats["val_rows"]


def test_ray_prepare_with_val_path_and_shards(ray_session, data, tmp_path):
    d, val = data
    cfg = _cfg(tmp_path, f"data.path={d}", f"data.val_path={val}", "data.language=en")
    p = prepare(cfg, source="tiny-qwen2")
    _same(p, prepare(cfg, read=read_pairs, source="tiny-qwen2"))
    assert p.stats["rows_read"] == 900 + 700 + 300
    # worker i: the rows with row_idx in its own range, the same ones on every call (exact resume)
    runs = []
    for _ in range(2):
        _, parts = tokenized_datasets(p, cfg)
        runs.append({k: [sorted(r["row_idx"] for r in piece.take_all()) for piece in v] for k, v in parts.items()})
    assert runs[0] == runs[1]
    n, m = p.stats["train_rows"], p.stats["train_rows"] // 2
    assert runs[0]["train"] == [list(range(0, m)), list(range(m, 2 * m))] and 2 * m >= n - 1
    assert sorted(i for piece in runs[0]["val"] for i in piece) == list(range(p.stats["val_rows"]))


def test_too_few_rows_after_the_split(ray_session, data, tmp_path):
    d, _ = data
    from rayft.data.formats import DataError
    with pytest.raises(DataError, match="training rows after the split; need at least"):
        prepare(_cfg(tmp_path, f"data.path={d}", "train.batch_size=5000"), source="tiny-qwen2")


def test_json_array_checked_from_its_head_and_a_broken_one_still_refused(ray_session, tmp_path):
    """formats.check_file decodes a JSON array's first MiB only (a big file is not parsed whole on
    the driver); a file whose head is fine but whose whole is not JSON reads as JSON Lines, every
    line rejected, and read_ds raises the same "no valid rows" error the whole-file check gave."""
    from rayft.data.formats import DataError, check_pairs
    from rayft.data.ray_read import read_ds

    recs = [{"instruction": f"Translate {i}", "output": f"译 {i} " + "x" * 200} for i in range(8000)]
    good = tmp_path / "good.json"
    good.write_text("[" + ",\n".join(json.dumps(r) for r in recs) + "]")
    assert good.stat().st_size > 1 << 20 and check_pairs(str(good)) == {str(good): "alpaca"}
    assert read_ds(str(good)).files()[str(good)] == read_pairs(str(good)).files[str(good)]
    bad = tmp_path / "bad.json"
    bad.write_text("[" + ",\n".join(json.dumps(r) for r in recs) + ",\n{broken")
    assert check_pairs(str(bad)) == {str(bad): "alpaca"}
    with pytest.raises(DataError, match=r"bad.json: no valid rows; first problem at line 1: malformed JSON"):
        read_ds(str(bad))
    with pytest.raises(DataError, match=r"bad.json: no valid rows; first problem at line 1: malformed JSON"):
        read_pairs(str(bad))


def test_parquet_checked_from_its_first_batches(tmp_path):
    """No Ray: the driver's check of a Parquet file reads batches up to its first valid row and
    gives the format the whole-file reader gives; a corrupt file is still refused."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rayft.data.formats import DataError, check_pairs

    f = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": [""] * 3000 + ["q"] * 10, "response": ["a"] * 3010}), f, row_group_size=500)
    assert check_pairs(str(f)) == {str(f): "prompt_response"} == {str(f): read_pairs(str(f)).files[str(f)]["format"]}
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DataError, match="bad.parquet: no valid rows; first problem at line 0: unreadable Parquet"):
        check_pairs(str(bad))
