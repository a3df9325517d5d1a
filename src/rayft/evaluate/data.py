"""The val and golden rows `rayft eval` scores. Pure (no Ray).

Sources, first match wins per split:
* ``data.val`` / ``data.golden``: pairs files in any supported format;
* ``data.curated``: ``<curated>/<language>/{val,golden}/*.parquet`` from ``rayft curate``;
* val only: the candidate run's own held-out split, recomputed from its config exactly
  as training split it (content hash + seed), so eval never scores training rows.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..config import ConfigError
from ..data.formats import DataError, read_pairs
from ..data.records import conform_pairs, content_hash, rows_to_table, split_of
from .config import EvalConfig

COLUMNS = ["system", "history", "prompt", "response", "language"]


def _curated(root: str, lang: str, split: str) -> pa.Table | None:
    d = Path(root).expanduser() / lang / split
    files = sorted(d.glob("*.parquet")) if d.is_dir() else []
    if not files:
        return None
    return pa.concat_tables([conform_pairs(pq.read_table(f)) for f in files])


def _run_val(run_cfg: dict) -> pa.Table:
    data, seed = run_cfg.get("data", {}), run_cfg.get("run", {}).get("seed", 0)
    try:
        if data.get("val_path"):
            return read_pairs(data["val_path"], data.get("format", "auto")).table()
        rows = read_pairs(data["path"], data.get("format", "auto")).rows
    except (DataError, KeyError) as e:
        raise ConfigError(f"cannot recompute the run's validation split ({e}); set data.val") from None
    lang = data.get("language")
    rows = [r for r in rows if not lang or r["language"] == lang]
    val = [r for r in rows if split_of(content_hash(r["system"], r["history"], r["prompt"], r["response"]),
                                       data.get("val_fraction", 0.1), str(seed)) == "val"]
    return rows_to_table(val)


def digest(table: pa.Table) -> str:
    """Content hash of a split (order-sensitive), recorded in eval.json for lineage."""
    h = hashlib.sha256()
    for s, hi, p, r in zip(*(table[c].to_pylist() for c in ("system", "history", "prompt", "response"))):
        h.update(content_hash(s or "", hi or "", p, r).encode())
    return h.hexdigest()


def eval_tables(cfg: EvalConfig, run_cfg: dict) -> dict[str, pa.Table]:
    """{"val": table, "golden": table} with COLUMNS (+ ``split``), capped at data.max_rows."""
    d = cfg.data
    lang = d.language or run_cfg.get("data", {}).get("language", "")
    if d.curated and not lang:
        raise ConfigError("data.curated needs data.language (or a candidate trained with data.language)")
    out = {}
    for split in ("val", "golden"):
        path = getattr(d, split)
        try:
            if path:
                t = read_pairs(path, d.format).table()
            elif d.curated:
                t = _curated(d.curated, lang, split)
                if t is None:
                    raise ConfigError(f"data.curated: no {lang}/{split}/*.parquet under {d.curated}")
            else:
                t = _run_val(run_cfg)  # only val reaches here: golden is required by config
        except DataError as e:
            raise ConfigError(f"data.{split}: {e}") from None
        if d.max_rows:
            t = t.slice(0, d.max_rows)
        t = t.select(COLUMNS)
        out[split] = t.append_column("split", pa.array([split] * t.num_rows, pa.string()))
    if out["golden"].num_rows == 0:
        raise ConfigError("the golden set is empty")
    return out
