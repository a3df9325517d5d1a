"""Weighted mixtures of several sources (``data.sources``), deterministic by seed.

Each source is ``{path, format?, columns?, weight? | max_rows?, name?}``:

* ``path``/``format``: as ``data.path``/``data.format`` (file, folder, glob, datasets folder).
* ``columns``: the source's column mapping, rayft field -> the file's column (like a
  LLaMA-Factory ``dataset_info`` entry), e.g. ``{prompt: question, response: answer}``;
  see ``formats.COLUMN_KEYS``.
* ``weight``: a multiplier on the source's kept rows: 0.5 keeps a seeded half, 2 uses every
  row twice (and 2.5 twice plus a seeded half). Default 1.
* ``max_rows``: keep at most this many rows (a seeded sample). Not together with ``weight``.

The seeded choice orders a source's kept rows by a hash of (seed, source, row content),
so the same seed and data give the same rows whatever the read order. Repeated rows have
the same content hash, so they land in the same train/val split (no leakage). Every
source is read with the same reader as ``data.path`` (rows read = kept + rejected per
source), reported in ``ReadResult.sources``.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any, Callable

from .formats import FORMATS, DataError, ReadResult, check_columns, check_pairs, read_pairs
from .records import content_hash

SOURCE_KEYS = ("path", "format", "columns", "weight", "max_rows", "name")


def check_sources(sources: Any) -> list[dict]:
    """Validated, normalised ``data.sources`` entries (DataError names the entry and key)."""
    if not isinstance(sources, list) or not sources:
        raise DataError("data.sources: expected a non-empty list of {path, format, columns, weight | max_rows}")
    out, names = [], set()
    for i, s in enumerate(sources):
        where = f"data.sources[{i}]"
        if isinstance(s, str):
            s = {"path": s}
        if not isinstance(s, dict):
            raise DataError(f"{where}: expected a mapping with at least 'path'")
        s = dict(s)
        bad = sorted(set(s) - set(SOURCE_KEYS))
        if bad:
            raise DataError(f"{where}: unknown key {bad[0]!r}; expected {', '.join(SOURCE_KEYS)}")
        if not isinstance(s.get("path"), (str, list)) or not s["path"]:
            raise DataError(f"{where}.path: required (file, folder or glob)")
        fmt = s.get("format") or "auto"
        if fmt != "auto" and fmt not in FORMATS:
            raise DataError(f"{where}.format: unknown format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
        if s.get("weight") is not None and s.get("max_rows") is not None:
            raise DataError(f"{where}: give weight or max_rows, not both")
        w = s.get("weight", 1.0)
        w = 1.0 if w is None else w
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not (w > 0 and math.isfinite(w)):
            raise DataError(f"{where}.weight: expected a number > 0, got {w!r}")
        m = s.get("max_rows")
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise DataError(f"{where}.max_rows: expected an integer >= 1, got {m!r}")
        name = str(s.get("name") or (s["path"] if isinstance(s["path"], str) else f"source{i}"))
        if name in names:
            name = f"{name}#{i}"
        names.add(name)
        out.append({"name": name, "path": s["path"], "format": fmt,
                    "columns": check_columns(s.get("columns"), f"{where}.columns"),
                    "weight": float(w), "max_rows": m})
    return out


def check_mixture(sources: Any) -> list[dict]:
    """Driver-side checks before Ray starts: every source's files exist and have a valid row."""
    srcs = check_sources(sources)
    for s in srcs:
        check_pairs(s["path"], s["format"], s["columns"] or None)
    return srcs


def _key(seed: int, name: str, r: dict) -> bytes:
    h = content_hash(r["system"], r["history"] + r.get("messages", ""), r["prompt"], r["response"])
    return hashlib.sha1(f"{seed}\x1f{name}\x1f{h}\x1f{r['file']}\x1f{r['line']}".encode()).digest()


def sample_rows(rows: list[dict], weight: float, max_rows: int | None, seed: int, name: str) -> list[dict]:
    """The rows a source contributes: ``weight`` x its rows (whole repeats + a seeded part),
    or at most ``max_rows`` (a seeded sample); kept in read order within each repeat."""
    if max_rows is not None:
        n_whole, n_part = (0, min(max_rows, len(rows))) if max_rows < len(rows) else (1, 0)
    else:
        n_whole = int(weight)
        n_part = int(round((weight - n_whole) * len(rows)))
    out = [r for _ in range(n_whole) for r in rows]
    if n_part:
        chosen = set(sorted(range(len(rows)), key=lambda i: _key(seed, name, rows[i]))[:n_part])
        out += [r for i, r in enumerate(rows) if i in chosen]
    return out


def read_mixture(sources: Any, seed: int = 0, read: Callable[..., ReadResult] | None = None) -> ReadResult:
    """Read every source (``read``: ``formats.read_pairs`` or ``ray_read.read_pairs_ray``) and
    sample it; one ReadResult whose ``sources`` lists each source's read/kept/rejected/used."""
    srcs = check_sources(sources)
    total = ReadResult()
    for s in srcs:
        if read is None:
            res = read_pairs(s["path"], s["format"], columns=s["columns"] or None)
        else:
            res = read(s["path"], s["format"], columns=s["columns"] or None)
        used = sample_rows(res.rows, s["weight"], s["max_rows"], seed, s["name"])
        total.rows.extend(dict(r, source=s["name"]) for r in used)
        total.rejects.extend(dict(r, source=s["name"]) for r in res.rejects)
        total.files.update(res.files)
        total.sources.append({"name": s["name"], "path": s["path"], "format": s["format"],
                              "weight": s["weight"], "max_rows": s["max_rows"],
                              "read": res.rows_read, "kept": len(res.rows), "rejected": len(res.rejects),
                              "used": len(used), "files": sorted(res.files)})
    return total
