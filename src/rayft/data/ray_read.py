"""Read pair files with Ray Data into the one Arrow schema (records.PAIRS_SCHEMA).

The files are planned on the driver (``reader.plan_file``: byte ranges for big JSONL
files, one task per JSON/Parquet file) and read and normalised by Ray tasks
(``reader.read_task``) whose Arrow tables become a materialized Ray Dataset
(``ray.data.from_arrow_refs``), so a large dataset reads on every core of the cluster. Each
task returns every record it read as one Arrow row: the kept ones and the rejects (file,
line, reason, raw record) together, so nothing is dropped: rows read = kept + rejected.

``read_ds`` is what `rayft train` uses: the rows stay in Ray's object store (a
materialized Dataset) and the driver only gets per-task counts and the rejects. The same
tasks apply ``data.language`` (other languages -> rejects) and the content-hash train/val
split as per-row columns, and number each row within its task and split (``_rank``), so
global row numbers are per-task offsets + ``_rank``: deterministic whatever order Ray
runs the tasks in. ``read_pairs_ray`` brings the kept rows back as Python dicts (the
benchmark's check and ``data.sources`` mixtures, which sample rows on the driver).

File-level problems (missing file, unknown format, a file with no valid row) are
checked before this runs, on the driver and without Ray (``formats.check_pairs``).
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .formats import DataError, ReadResult, check_pairs
from .reader import plan_file, read_task
from .records import PAIR_COLUMNS, PAIRS_SCHEMA, content_hash, language_reject_reason, split_u

CHUNK_BYTES = 4 << 20
MIN_CHUNK_BYTES = 256 << 10
KEPT, READ_REJECT, LANGUAGE_REJECT = 0, 1, 2  # the _kind column
WORK_SCHEMA = pa.schema(list(PAIRS_SCHEMA) + [
    pa.field("_reason", pa.string()),  # why the row was rejected ("" when kept)
    pa.field("_raw", pa.string()),     # the record's text, for read rejects only ("" otherwise)
    pa.field("_kind", pa.int8()),      # KEPT | READ_REJECT | LANGUAGE_REJECT
    pa.field("_val", pa.bool_()),      # validation side of the split
    pa.field("_u", pa.float64()),      # records.split_u of the row's content hash (1.0 when unused)
    pa.field("_task", pa.int64()),     # planned task index: tasks are in (file, byte range) order
    pa.field("_rank", pa.int64()),     # 0-based number among the task's kept rows of the same split
    pa.field("_ord", pa.int64()),      # global read order: _task << 32 | record index in the task
])


def _task_table(task: dict, language: str, split: str, val_fraction: float, salt: str) -> pa.Table:
    """One planned task -> every record it read, as WORK_SCHEMA. ``split``: "train" / "val" (every
    kept row on that side) or "hash" (``records.split_u`` of the content hash < ``val_fraction``:
    validation, as ``records.split_of``)."""
    b = read_task(task)
    n = len(b["file"])
    kind = np.array([READ_REJECT if f == "read" else KEPT for f in b["_filter"]], np.int8)
    reason = list(b["_reason"])  # _raw: the read task (raw="rejects") filled it on read rejects only
    if language:
        for i, lang in enumerate(b["language"]):
            if kind[i] == KEPT and lang != language:
                kind[i] = LANGUAGE_REJECT
                reason[i] = language_reject_reason(lang, language)
    keep = kind == KEPT
    u = np.ones(n, np.float64)
    if split == "hash" and val_fraction > 0:
        for i in np.flatnonzero(keep):
            u[i] = split_u(content_hash(b["system"][i], b["history"][i], b["prompt"][i], b["response"][i]), salt)
        val = u < val_fraction
    else:
        val = np.full(n, split == "val")
    rank = np.zeros(n, np.int64)
    for side in (False, True):
        m = keep & (val == side)
        rank[m] = np.arange(int(m.sum()), dtype=np.int64)
    cols = [pa.array(b[f.name], f.type) for f in PAIRS_SCHEMA]
    cols += [pa.array(reason, pa.string()), pa.array(b["_raw"], pa.string()), pa.array(kind, pa.int8()),
             pa.array(val & keep, pa.bool_()), pa.array(u, pa.float64()),
             pa.array(np.full(n, task["_task"], np.int64)), pa.array(rank),
             pa.array((np.int64(task["_task"]) << 32) + np.arange(n, dtype=np.int64))]
    return pa.Table.from_arrays(cols, schema=WORK_SCHEMA)


def _counts(batch: pa.Table) -> pa.Table:
    """Ray Data map_batches: a block -> its row counts by (task, kind, split side, language)."""
    keys = ["_task", "_kind", "_val", "language"]
    if not batch.num_rows:
        return pa.table({**{k: pa.array([], WORK_SCHEMA.field(k).type) for k in keys}, "n": pa.array([], pa.int64())})
    t = batch.select([*keys, "_rank"]).group_by(keys).aggregate([("_rank", "count")])
    return t.rename_columns([("n" if c == "_rank_count" else c) for c in t.column_names]).select([*keys, "n"])


def _rejects(batch: pa.Table) -> pa.Table:
    """Ray Data map_batches: a block -> its rejected rows (what the driver writes to rejects.jsonl)."""
    return batch.filter(pc.not_equal(batch["_kind"], KEPT)).select(REJECT_COLUMNS)


REJECT_COLUMNS = ["file", "line", "_reason", "_raw", "_kind", "_ord", "prompt", "response"]
COUNT_COLUMNS = ["_task", "_kind", "_val", "language", "n"]


def _summary(batch: pa.Table) -> pa.Table:
    """Ray Data map_batches: a block -> its counts and its rejects in one small table (one
    pass over the data for both): count rows have ``n`` set, reject rows ``n`` null."""
    c, r = _counts(batch), _rejects(batch)
    cols = {}
    for name in dict.fromkeys(COUNT_COLUMNS + REJECT_COLUMNS):
        typ = pa.int64() if name == "n" else WORK_SCHEMA.field(name).type
        cols[name] = pa.concat_arrays([t[name].combine_chunks().cast(typ) if name in t.column_names
                                       else pa.nulls(t.num_rows, typ) for t in (c, r)])
    return pa.table(cols)


def _kept(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.equal(batch["_kind"], KEPT)).select([*PAIR_COLUMNS, "_ord"])


@functools.cache
def _read_remote():
    import ray

    @ray.remote(num_cpus=0.5, num_returns=2)
    def read_one(task: dict, **kw) -> tuple[pa.Table, pa.Table]:
        t = _task_table(task, **kw)
        return t, _summary(t)
    return read_one


def _collect(ds, fn, **fn_kwargs) -> pa.Table | None:
    """Run a small-output map over every block of ``ds`` and bring only its output to the driver."""
    parts = [b for b in ds.map_batches(fn, fn_kwargs=fn_kwargs, batch_format="pyarrow", batch_size=None)
             .iter_batches(batch_size=None, batch_format="pyarrow") if b.num_rows]
    return pa.concat_tables(parts) if parts else None


@dataclass
class DsRead:
    """One read with Ray Data: ``ds`` (materialized, WORK_SCHEMA, in the object store) and
    what the driver keeps: the planned tasks' files, each file's format and the counts."""
    ds: Any
    task_files: list[str]
    formats: dict[str, str]
    counts: pa.Table  # _task, _kind, _val, language, n
    reject_rows: pa.Table | None = None  # REJECT_COLUMNS of every rejected row (None: none)

    def count(self, kind: int | None = None, val: bool | None = None) -> int:
        m = np.ones(self.counts.num_rows, bool)
        if kind is not None:
            m &= self.counts["_kind"].to_numpy() == kind
        if val is not None:
            m &= self.counts["_val"].to_numpy(zero_copy_only=False) == val
        return int(self.counts["n"].to_numpy()[m].sum())

    def per_task(self, val: bool) -> np.ndarray:
        """Kept rows of one split side per task, as an array indexed by task."""
        out = np.zeros(len(self.task_files), np.int64)
        c = self.counts
        m = (c["_kind"].to_numpy() == KEPT) & (c["_val"].to_numpy(zero_copy_only=False) == val)
        np.add.at(out, c["_task"].to_numpy()[m], c["n"].to_numpy()[m])
        return out

    def per_language(self) -> dict[str, tuple[int, int]]:
        """Kept rows per language ("" counted as "und"): (train side, val side)."""
        out: dict[str, list[int]] = {}
        for lang, val, kind, n in zip(self.counts["language"].to_pylist(), self.counts["_val"].to_pylist(),
                                      self.counts["_kind"].to_pylist(), self.counts["n"].to_pylist()):
            if kind == KEPT:
                out.setdefault(lang or "und", [0, 0])[int(val)] += n
        return {k: (v[0], v[1]) for k, v in out.items()}

    def files(self) -> dict[str, dict]:
        """path -> {"format", "read", "kept", "rejected"} as ``formats.read_pairs`` reports it
        (a row ``data.language`` drops was read and kept by the reader)."""
        out = {p: {"format": f, "read": 0, "kept": 0, "rejected": 0} for p, f in self.formats.items()}
        for task, kind, n in zip(self.counts["_task"].to_pylist(), self.counts["_kind"].to_pylist(),
                                 self.counts["n"].to_pylist()):
            f = out[self.task_files[task]]
            f["read"] += n
            f["rejected" if kind == READ_REJECT else "kept"] += n
        return out

    def rejects(self) -> list[dict]:
        """Read rejects in (file, line) order, then ``data.language`` rejects in read order."""
        t = self.reject_rows
        if t is None or not t.num_rows:
            return []
        t = t.sort_by([("_kind", "ascending"), ("_ord", "ascending")])
        out = []
        for r in t.to_pylist():
            rec = (_record(r["_raw"], r["_reason"]) if r["_kind"] == READ_REJECT
                   else {"prompt": r["prompt"], "response": r["response"]})
            out.append({"file": r["file"], "line": r["line"], "reason": r["_reason"], "record": rec})
        return out

    def kept_rows(self) -> list[dict]:
        """Every kept row as a dict, in read order: brings the rows to the driver (tests,
        the benchmark's check, mixtures); `rayft train` never calls it."""
        t = _collect(self.ds, _kept)
        if t is None:
            return []
        return t.sort_by("_ord").select(PAIR_COLUMNS).to_pylist()


def _cluster_cpus() -> int:
    """The Ray cluster's CPUs (this machine's cores when Ray is not running or says nothing)."""
    cpus = os.cpu_count() or 1
    try:
        import ray
        if ray.is_initialized():
            cpus = int(ray.cluster_resources().get("CPU", cpus)) or cpus
    except Exception:  # noqa: BLE001 - the local core count is a fine fallback
        pass
    return max(1, cpus)


def auto_chunk_bytes(paths) -> int:
    """Byte ranges small enough that the JSONL files read (and later tokenize) as several
    tasks per core, large enough that per-task overhead stays small."""
    total = sum(os.path.getsize(p) for p in paths if p.endswith(".jsonl") and os.path.isfile(p))
    return int(min(CHUNK_BYTES, max(MIN_CHUNK_BYTES, total // (4 * _cluster_cpus()))))


def read_ds(spec: str | list[str], fmt: str = "auto", chunk_bytes: int | None = None,
            columns: dict | None = None, language: str = "", split: str = "train",
            val_fraction: float = 0.0, salt: str = "", formats: dict[str, str] | None = None) -> DsRead:
    """Every file of ``spec`` read by Ray Data tasks into a materialized Dataset (WORK_SCHEMA);
    the driver receives per-task counts only. Needs a running Ray. Raises DataError like
    ``formats.read_pairs`` (checked on the driver first, before any task runs; ``formats``:
    that check's result when the caller has just run it)."""
    import ray.data

    formats = formats or check_pairs(spec, fmt, columns)
    chunk = chunk_bytes or auto_chunk_bytes(formats)
    # a file's format is fixed from its first valid row (what check_pairs found), so
    # every byte range of a big JSONL file normalises the same way
    tasks = [dict(t, fmt=formats[p], defer_language=False, raw="rejects")  # _task_table relies on raw
             for p in formats for t in plan_file(p, formats[p], chunk, columns=columns)]
    for i, t in enumerate(tasks):
        t["_task"] = i
    # One Ray task per planned task returns its rows (WORK_SCHEMA) and their summary (counts +
    # rejects); the rows become a materialized Dataset (ray.data.from_arrow_refs) that every later
    # step maps with Ray Data. Plain tasks, not Ray Data's executor, for the read itself: a
    # map_batches read plus a second pass for the summary cost ~2 s more than this on 2 cores
    # (benchmarks/read_bench.py, RESULTS.md). Half a CPU per task (fits beside replicas/actors
    # holding whole CPUs), but no more at once than the cluster has CPUs (4 on 2 cores: 1.5x the
    # wall time of 2).
    kw = dict(language=language, split=split, val_fraction=val_fraction, salt=salt)
    work, sums, running = [], [], []
    window, remote = _cluster_cpus(), _read_remote()
    for t in tasks:
        if len(running) >= window:
            _done, running = ray.wait(running, num_returns=1)
        w, sm = remote.remote(t, **kw)
        work.append(w)
        sums.append(sm)
        running.append(sm)
    parts = [t for t in ray.get(sums) if t.num_rows]
    ds = ray.data.from_arrow_refs(work)
    summary = pa.concat_tables(parts) if parts else None  # counts and rejects: all the driver receives
    if summary is None:
        counts, rejects = _counts(WORK_SCHEMA.empty_table()), None
    else:
        is_count = pc.is_valid(summary["n"])
        keys = COUNT_COLUMNS[:-1]
        counts = summary.filter(is_count).select(COUNT_COLUMNS).group_by(keys).aggregate([("n", "sum")])
        counts = counts.rename_columns([("n" if c == "n_sum" else c) for c in counts.column_names]).select(COUNT_COLUMNS)
        rejects = summary.filter(pc.invert(is_count)).select(REJECT_COLUMNS)
    r = DsRead(ds, [t["path"] for t in tasks], formats, counts, rejects)
    empty = [p for p, f in r.files().items() if f["kept"] == 0]
    if empty:  # the driver's check passed on the file's head (formats.check_file) but no row is valid
        first = next((x for x in r.rejects() if x["file"] == empty[0]), None)
        why = f"; first problem at line {first['line']}: {first['reason']}" if first else " (file is empty)"
        raise DataError(f"{empty[0]}: no valid rows{why}")
    return r


def read_pairs_ray(spec: str | list[str], fmt: str = "auto", chunk_bytes: int | None = None,
                   columns: dict | None = None) -> ReadResult:
    """Every file of ``spec`` read by Ray Data tasks; kept rows (as dicts, on the driver) in
    (file, line) order. Needs a running Ray. Raises DataError like ``formats.read_pairs``."""
    r = read_ds(spec, fmt, chunk_bytes, columns)
    res = ReadResult()
    res.rows, res.rejects, res.files = r.kept_rows(), r.rejects(), r.files()
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
