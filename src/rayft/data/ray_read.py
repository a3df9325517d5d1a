"""Read pair files with Ray Data into the one Arrow schema (records.PAIRS_SCHEMA).

The files are planned on the driver (``reader.plan_file``: byte ranges for big JSONL
files, one task per JSON/Parquet file) and read and normalised by Ray Data tasks
(``reader.read_task``), so a large dataset reads on every core of the cluster. Each
task returns its kept rows and its rejects (file, line, reason, raw record) together,
so nothing is dropped: rows read = rows kept + rows rejected.

File-level problems (missing file, unknown format, a file with no valid row) are
checked before this runs, on the driver and without Ray (``formats.check_pairs``).
"""
from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from .formats import ReadResult, check_pairs
from .reader import plan_file, read_task
from .records import PAIR_COLUMNS, PAIRS_SCHEMA

CHUNK_BYTES = 4 << 20


def _read_block(batch: pa.Table) -> pa.Table:
    """Ray Data map_batches: one planned task (a one-row batch) -> its rows as Arrow."""
    out = []
    for task in batch.to_pylist():
        b = read_task(task)
        cols = [pa.array(b[f.name], f.type) for f in PAIRS_SCHEMA]
        cols += [pa.array(b["_raw"], pa.string()), pa.array(b["_reason"], pa.string()),
                 pa.array([f == "read" for f in b["_filter"]], pa.bool_())]
        out.append(pa.Table.from_arrays(cols, names=[*PAIR_COLUMNS, "_raw", "_reason", "_rejected"]))
    return pa.concat_tables(out)


def read_pairs_ray(spec: str | list[str], fmt: str = "auto", chunk_bytes: int = CHUNK_BYTES,
                   columns: dict | None = None) -> ReadResult:
    """Every file of ``spec`` read by Ray Data tasks; rows in (file, line) order.

    Needs a running Ray (``_env.ray_start``). Raises DataError like ``formats.read_pairs``
    (checked on the driver first, before any task runs).
    """
    import ray.data

    formats = check_pairs(spec, fmt, columns)
    # a file's format is fixed from its first valid row (what check_pairs found), so
    # every byte range of a big JSONL file normalises the same way
    tasks = [dict(t, fmt=formats[p], defer_language=False)
             for p in formats for t in plan_file(p, formats[p], chunk_bytes, columns=columns)]
    ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))
    ds = ds.map_batches(_read_block, batch_size=1, batch_format="pyarrow", num_cpus=0.5)
    parts = [b for b in ds.iter_batches(batch_size=None, batch_format="pyarrow") if b.num_rows]
    table = pa.concat_tables(parts) if parts else _empty()
    order = {p: i for i, p in enumerate(formats)}
    table = table.append_column("_file_idx", pa.array([order[f] for f in table["file"].to_pylist()], pa.int64()))
    table = table.sort_by([("_file_idx", "ascending"), ("line", "ascending")])
    bad = table["_rejected"]
    res = ReadResult()
    res.rows = table.filter(pc.invert(bad)).select(PAIR_COLUMNS).to_pylist()
    rej = table.filter(bad).select(["file", "line", "_reason", "_raw"]).to_pylist()
    res.rejects = [{"file": r["file"], "line": r["line"], "reason": r["_reason"], "record": _record(r["_raw"], r["_reason"])}
                   for r in rej]
    kept, rejected = Counter(r["file"] for r in res.rows), Counter(r["file"] for r in res.rejects)
    for path in formats:
        res.files[path] = {"format": formats[path], "read": kept[path] + rejected[path],
                           "kept": kept[path], "rejected": rejected[path]}
    return res


def _record(raw: str, reason: str):
    """The reject's record as the in-process reader gives it: the parsed record, or the
    line's text when the line itself could not be decoded (bad UTF-8, malformed JSON)."""
    if not raw or reason.startswith(("line is not valid UTF-8", "malformed JSON")):
        return raw or None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _empty() -> pa.Table:
    return pa.Table.from_arrays([pa.array([], f.type) for f in PAIRS_SCHEMA]
                                + [pa.array([], pa.string()), pa.array([], pa.string()), pa.array([], pa.bool_())],
                                names=[*PAIR_COLUMNS, "_raw", "_reason", "_rejected"])
