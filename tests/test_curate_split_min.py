"""Curate's per-language minimum validation size (split.min_val_rows), pure: assemble.assign_splits
on a hand-built working table, no Ray."""
from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq

from rayft.config import load
from rayft.curate import assemble, output
from rayft.curate.config import CurateConfig
from rayft.data.records import split_of, split_u


def _cfg(*overrides: str) -> CurateConfig:
    return load(CurateConfig, None, ["data.path=x", "output.dir=y", *overrides])


def _working(langs: dict[str, int], golden: int = 0) -> assemble.Working:
    files, lines, lang, hashes, gold = [], [], [], [], []
    for name, n in langs.items():
        for k in range(n):
            files.append(f"{name}.jsonl")
            lines.append(k + 1)
            lang.append(name)
            hashes.append(hashlib.sha1(f"{name}-{k}".encode()).hexdigest())
            gold.append(k < golden)
    t = pa.table({"file": files, "line": lines, "language": lang, "_hash": hashes, "_golden": gold,
                  "_filter": [""] * len(files), "_reason": [""] * len(files)})
    return assemble.Working.of(t)


def _counts(w: assemble.Working) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for lang, s in zip(w.col("language"), w.split):
        d = out.setdefault(lang, {"train": 0, "val": 0, "golden": 0})
        d[s] += 1
    return out


def test_small_language_gets_min_val_rows_large_language_untouched():
    cfg = _cfg()
    assert cfg.split.min_val_rows == 10
    w = _working({"en": 2000, "zh": 75})
    info = assemble.assign_splits(w, cfg)
    c = _counts(w)
    # the large language keeps exactly the hash split (what split.min_val_rows=0 gives)
    base = _working({"en": 2000, "zh": 75})
    assemble.assign_splits(base, _cfg("split.min_val_rows=0"))
    hash_split = _counts(base)
    assert c["en"] == hash_split["en"] and c["en"]["val"] >= 10
    assert [s for s, g in zip(w.split, w.col("language")) if g == "en"] == \
           [s for s, g in zip(base.split, base.col("language")) if g == "en"]
    assert hash_split["zh"]["val"] < 10  # 5 % of 75 rows: the hand-off gap
    assert c["zh"] == {"train": 65, "val": 10, "golden": 0}
    assert info["moved_to_val"] == {"zh": 10 - hash_split["zh"]["val"]} and not info["warnings"]
    # the moved rows are the training rows nearest the validation side of the hash split
    hashes = w.col("_hash")
    zh = [i for i, g in enumerate(w.col("language")) if g == "zh"]
    u_val = sorted(split_u(hashes[i]) for i in zh if w.split[i] == "val")
    u_train = [split_u(hashes[i]) for i in zh if w.split[i] == "train"]
    assert max(u_val) < min(u_train)
    assert all(split_of(hashes[i], 0.05) == "train" for i in zh if w.split[i] == "train")


def test_deterministic_and_salt_respected():
    a, b = _working({"zh": 75}), _working({"zh": 75})
    assemble.assign_splits(a, _cfg("split.salt=s1"))
    assemble.assign_splits(b, _cfg("split.salt=s1"))
    assert a.split == b.split
    c = _working({"zh": 75})
    assemble.assign_splits(c, _cfg("split.salt=s2"))
    assert _counts(c)["zh"]["val"] == 10 and c.split != a.split


def test_tiny_language_capped_at_half_and_warned():
    w = _working({"fr": 7})
    info = assemble.assign_splits(w, _cfg())
    assert _counts(w)["fr"] == {"train": 4, "val": 3, "golden": 0}
    (note,) = info["warnings"]
    assert note.startswith("language 'fr': 3 validation rows (7 non-golden rows this run)") and "\n" not in note
    one = _working({"de": 1})
    info = assemble.assign_splits(one, _cfg())
    assert one.split == ["train"] and info["warnings"][0].startswith("language 'de': 0 validation rows")


def test_golden_rows_neither_moved_nor_counted():
    w = _working({"zh": 40}, golden=20)
    info = assemble.assign_splits(w, _cfg())
    assert _counts(w)["zh"] == {"train": 10, "val": 10, "golden": 20}
    assert info["warnings"] == []


def test_prior_val_rows_count_and_incremental_runs_do_not_move():
    w = _working({"zh": 30})
    info = assemble.assign_splits(w, _cfg(), prior_val={"zh": 12})
    base = _working({"zh": 30})
    assemble.assign_splits(base, _cfg("split.min_val_rows=0"))
    assert w.split == base.split and info["moved_to_val"] == {}
    w = _working({"zh": 30})
    assemble.assign_splits(w, _cfg(), prior_val={"zh": 8})
    assert _counts(w)["zh"]["val"] == max(2, _counts(base)["zh"]["val"])


def test_off_switches():
    for overrides in (["split.val_fraction=0"], ["split.min_val_rows=0", "split.val_fraction=0"]):
        w = _working({"zh": 75})
        info = assemble.assign_splits(w, _cfg(*overrides))
        assert set(w.split) == {"train"} and info["moved_to_val"] == {} and info["warnings"] == []
    w = _working({"zh": 75})
    info = assemble.assign_splits(w, _cfg("split.min_val_rows=0"))
    assert info["moved_to_val"] == {} and info["warnings"]  # hash split only, still warned


def test_prior_val_counts_reads_published_val_parts(tmp_path):
    for lang, n in (("zh", 3), ("zh", 4), ("en", 20)):
        d = tmp_path / lang / "val"
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"x": list(range(n))}), d / f"part-r{n}-00000.parquet")
    (tmp_path / "en" / "train").mkdir()
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "en" / "train" / "part-r1-00000.parquet")
    assert output.prior_val_counts(tmp_path) == {"zh": 7, "en": 20}
    assert output.prior_val_counts(tmp_path / "missing") == {}


def test_config_key_bounds():
    import pytest

    from rayft.config import ConfigError
    with pytest.raises(ConfigError, match="min_val_rows"):
        _cfg("split.min_val_rows=-1")
