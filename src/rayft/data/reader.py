"""Read pair files as parallel tasks: plan (driver) and read (one task) -> column batches.

Pure Python (no Ray). Large JSONL files are split into byte ranges on line boundaries
(with their starting line number) so one big file still reads on every core. Every
record becomes one row: canonical PAIRS_SCHEMA fields plus the working columns
``_raw`` (the original record text, for rejects), ``_filter``/``_reason`` (set when a
filter removes the row; ``"read"`` for unreadable records) and ``_masked``.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from .formats import FORMATS, RowError, detect_record_format, iter_raw_records, map_columns, undetected
from .formats import _normalize as normalize_record  # one record -> canonical fields
from .records import PAIR_COLUMNS

WORK_COLUMNS = PAIR_COLUMNS + ["_raw", "_filter", "_reason", "_masked", "_golden"]
Batch = dict[str, list]


def empty_batch() -> Batch:
    return {c: [] for c in WORK_COLUMNS}


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _first_format(lines, columns: dict | None = None) -> str | None:
    for raw in lines:
        if not raw.strip():
            continue
        try:
            fmt = detect_record_format(map_columns(json.loads(raw), columns))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            continue
        if fmt:
            return fmt
    return None


def plan_file(path: str, fmt: str = "auto", chunk_bytes: int = 4 << 20, golden: bool = False,
              columns: dict | None = None) -> list[dict]:
    """Tasks for one file: byte ranges for JSONL, the whole file otherwise."""
    base = {"path": path, "fmt": fmt, "golden": golden, "start": 0, "end": -1, "first_line": 1}
    if columns:
        base["columns"] = dict(columns)
    if not path.endswith(".jsonl"):
        return [base]
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            if fmt == "auto":
                head = [f.readline().rstrip(b"\n") for _ in range(2000)]
                base["fmt"] = _first_format(head, columns) or "auto"
            if size <= chunk_bytes:
                return [dict(base, end=size)]
            # streamed: the driver holds one buffer, not the file (a 1 GB file plans in ~1 MB)
            tasks, start, line = [], 0, 1
            while start < size:
                end = _next_newline(f, min(start + chunk_bytes, size) - 1)
                end = size if end < 0 else end + 1
                tasks.append(dict(base, start=start, end=end, first_line=line))
                line += _count_newlines(f, start, end)
                start = end
    except OSError:
        return [base]  # read_task reports it
    return tasks


def _next_newline(f, pos: int) -> int:
    """Offset of the first b"\\n" at or after ``pos`` (-1: none)."""
    f.seek(pos)
    while buf := f.read(1 << 16):
        j = buf.find(b"\n")
        if j >= 0:
            return pos + j
        pos += len(buf)
    return -1


def _count_newlines(f, start: int, end: int) -> int:
    f.seek(start)
    n, left = 0, end - start
    while left > 0 and (buf := f.read(min(1 << 20, left))):
        n += buf.count(b"\n")
        left -= len(buf)
    return n


def _iter_task(task: dict):
    """(line, record or raw text, raw text or None, error) for every record of a task (None: a
    JSON/Parquet record, whose text ``_raw_text`` makes when it is needed)."""
    path = task["path"]
    if task["end"] >= 0:  # JSONL byte range
        with open(path, "rb") as f:
            f.seek(task["start"])
            data = f.read(task["end"] - task["start"])
        for i, raw in enumerate(data.split(b"\n"), start=task["first_line"]):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad = raw.decode("utf-8", errors="replace")
                yield i, bad, bad, f"line is not valid UTF-8 ({e.reason} at byte {e.start})"
                continue
            try:
                yield i, json.loads(text), text, None
            except json.JSONDecodeError as e:
                yield i, text, text, f"malformed JSON: {e.msg} at column {e.colno}"
            except RecursionError:
                yield i, text, text, "malformed JSON: nested too deeply"
        return
    for line, rec, err in iter_raw_records(path):
        yield line, rec, None, err  # raw text: made by read_task only where it is kept (_raw_text)


def _defer_language(rec: Any) -> Any:
    """Mark a record without a language 'und' so the reader skips its per-character
    detection; the language filter detects it later with a regex (same CJK-ratio rule)."""
    if not isinstance(rec, dict) or rec.get("language"):
        return rec
    md = rec.get("metadata")
    if isinstance(md, dict) and md.get("language"):
        return rec
    return dict(rec, language="und")


def _raw_text(rec: Any) -> str:
    return rec if isinstance(rec, str) else json.dumps(rec, ensure_ascii=False, default=str)


def read_task(task: dict) -> Batch:
    """Read one task into a column batch; bad records become ``_filter="read"`` rows.

    ``task["raw"]``: "all" (default: every row's ``_raw``, curate's later filters reject rows
    with their record) or "rejects" (``_raw`` only on rows rejected here, "" on the others:
    `rayft train`'s read, which never needs a kept row's text, skips re-encoding every
    JSON/Parquet record)."""
    out = empty_batch()
    fmt = None if task["fmt"] == "auto" else task["fmt"]
    golden = bool(task.get("golden"))
    defer = task.get("defer_language", True)  # curate detects language later, vectorised
    raw_all = task.get("raw", "all") != "rejects"

    def add(row: dict, raw: str | None, err: str | None, rec: Any = None) -> None:
        for c in PAIR_COLUMNS:
            out[c].append(row.get(c, "" if c != "line" else 0))
        if raw is None:
            raw = _raw_text(rec) if err or raw_all else ""
        out["_raw"].append(raw)
        out["_filter"].append("read" if err else "")
        out["_reason"].append(err or "")
        out["_masked"].append("")
        out["_golden"].append(golden)

    columns = task.get("columns")
    try:
        for line, orig, raw, err in _iter_task(task):
            rec = map_columns(orig, columns)
            if err is None and fmt is None:
                fmt = detect_record_format(rec)
                if fmt is None:
                    err = undetected(rec)
            row: dict[str, Any] = {"file": task["path"], "line": line}
            if err is None:
                if fmt not in FORMATS:
                    err = f"unknown format {fmt!r}"
                else:
                    try:
                        row.update(normalize_record(_defer_language(rec) if defer else rec, fmt))
                    except RowError as e:
                        err = str(e)
                    except (ValueError, TypeError, KeyError, AttributeError) as e:  # odd data, not a crash
                        err = f"cannot read record: {type(e).__name__}: {e}"
            add(row, raw, err, orig)
    except OSError as e:
        add({"file": task["path"], "line": 0}, "", f"unreadable file: {e.strerror or e}")
    return out
