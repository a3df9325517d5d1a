"""Readers for the users' pair formats -> canonical rows (records.PAIRS_SCHEMA).

Formats (detected per file from its first valid record, or named in config):

* ``subtitle``: W1 subtitle pairs ``{"original_subtitles": [{start,end,text}],
  "viral_subtitles": [...], "metadata": {...}}``. Prompt/response are the tracks rendered
  one cue per line as ``[start-end] text`` so timings survive training.
* ``prompt_response``: ``{"prompt", "response"}`` (also ``{"user", "assistant"}``).
* ``alpaca``: ``{"instruction", "input"?, "output"}``.
* ``sharegpt``: ``{"conversations": [{"from"|"role", "value"|"content"}]}`` or
  ``{"messages": [...]}``; the last assistant turn is the response, earlier turns history.

Files may be JSONL, JSON (an array, or one object), or Parquet with those columns.
Pure code: no Ray imports. Bad rows become rejects with file, line and reason.
"""
from __future__ import annotations

import glob as _glob
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from .records import content_hash, detect_language, rows_to_table

FORMATS = ("subtitle", "prompt_response", "alpaca", "sharegpt")
EXTENSIONS = (".jsonl", ".json", ".parquet")
SUBTITLE_INSTRUCTION = "Rewrite these subtitles into a punchy viral cut. Keep the [start-end] timings in seconds."


class DataError(ValueError):
    """Input that cannot be used at all (missing file, unknown format, no valid rows)."""


class RowError(ValueError):
    """One bad row; the message is the reject reason."""


@dataclass
class ReadResult:
    rows: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    files: dict[str, dict] = field(default_factory=dict)  # path -> {"format", "read", "rejected"}

    @property
    def rows_read(self) -> int:
        return len(self.rows) + len(self.rejects)

    def table(self) -> pa.Table:
        return rows_to_table(self.rows)


def resolve_paths(spec: str | list[str]) -> list[str]:
    """A file, a directory (its pair files, recursively) or a glob -> sorted file list."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for s in specs:
        p = Path(os.path.expanduser(s))
        if p.is_dir():
            found = [str(f) for f in sorted(p.rglob("*")) if f.is_file() and f.suffix in EXTENSIONS]
            if not found:
                raise DataError(f"data.path: directory {p} holds no {'/'.join(EXTENSIONS)} files")
            out.extend(found)
        elif p.is_file():
            out.append(str(p))
        elif any(c in s for c in "*?["):
            found = sorted(f for f in _glob.glob(os.path.expanduser(s), recursive=True) if os.path.isfile(f))
            if not found:
                raise DataError(f"data.path: glob {s!r} matches no files")
            out.extend(found)
        else:
            raise DataError(f"data.path: file not found: {s}")
    return sorted(dict.fromkeys(out))


# --------------------------------------------------------------------------- records

def iter_raw_records(path: str) -> Iterator[tuple[int, Any, str | None]]:
    """Yield (line, record or raw text, error or None) for every record in a file."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq
        try:
            table = pq.read_table(path)
        except Exception as e:  # corrupt parquet: one file-level reject
            yield 0, None, f"unreadable Parquet file: {e}"
            return
        for i, rec in enumerate(table.to_pylist(), start=1):
            yield i, rec, None
        return
    if path.endswith(".json"):
        try:
            obj = json.loads(Path(path).read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            obj = None  # maybe JSON Lines with a .json name: fall through
        else:
            items = obj if isinstance(obj, list) else [obj]
            for i, rec in enumerate(items, start=1):
                yield i, rec, None
            return
    with open(path, "rb") as f:  # JSON Lines, streamed: check_file stops at the first good row
        yield from _iter_lines(f)


def _iter_lines(f) -> Iterator[tuple[int, Any, str | None]]:
    for i, raw in enumerate(f, start=1):
        raw = raw.rstrip(b"\n")
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield i, raw.decode("utf-8", errors="replace"), f"line is not valid UTF-8 ({e.reason} at byte {e.start})"
            continue
        try:
            yield i, json.loads(text), None
        except json.JSONDecodeError as e:
            yield i, text, f"malformed JSON: {e.msg} at column {e.colno}"


def detect_record_format(rec: Any) -> str | None:
    if not isinstance(rec, dict):
        return None
    if "original_subtitles" in rec or "viral_subtitles" in rec:
        return "subtitle"
    if "conversations" in rec or "messages" in rec:
        return "sharegpt"
    if "instruction" in rec or "output" in rec:
        return "alpaca"
    if "prompt" in rec or "response" in rec or ("user" in rec and "assistant" in rec):
        return "prompt_response"
    return None


def _text(rec: dict, key: str, required: bool = True) -> str:
    if key not in rec or rec[key] is None:
        if required:
            raise RowError(f"field '{key}' is missing")
        return ""
    v = rec[key]
    if isinstance(v, float) and math.isnan(v):
        if required:
            raise RowError(f"field '{key}' is missing")
        return ""
    if not isinstance(v, str):
        raise RowError(f"field '{key}' must be a string, got {type(v).__name__}")
    if required and not v.strip():
        raise RowError(f"field '{key}' is empty")
    return v


def _fmt_time(t: float) -> str:
    return f"{t:g}"


def render_subtitles(cues: Any, key: str) -> str:
    if not isinstance(cues, list) or not cues:
        raise RowError(f"field '{key}' must be a non-empty list of {{start, end, text}}")
    lines = []
    for i, c in enumerate(cues):
        if not isinstance(c, dict):
            raise RowError(f"{key}[{i}] must be an object with start, end, text")
        for k in ("start", "end"):
            if not isinstance(c.get(k), (int, float)) or isinstance(c.get(k), bool):
                raise RowError(f"{key}[{i}].{k} must be a number of seconds, got {c.get(k)!r}")
        t = c.get("text")
        if not isinstance(t, str) or not t.strip():
            raise RowError(f"{key}[{i}].text must be a non-empty string")
        lines.append(f"[{_fmt_time(c['start'])}-{_fmt_time(c['end'])}] {' '.join(t.split())}")
    return "\n".join(lines)


_ROLE = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "bot": "assistant", "model": "assistant", "system": "system"}


def _normalize(rec: Any, fmt: str) -> dict:
    """One raw record -> canonical fields (without file/line). Raises RowError."""
    if not isinstance(rec, dict):
        raise RowError(f"expected a JSON object, got {type(rec).__name__}")
    system, history, meta = "", [], {}
    md = rec.get("metadata")
    if md is not None and not isinstance(md, dict):
        raise RowError("field 'metadata' must be an object")
    meta = dict(md or {})
    if fmt == "subtitle":
        prompt = SUBTITLE_INSTRUCTION + "\n" + render_subtitles(rec.get("original_subtitles"), "original_subtitles")
        response = render_subtitles(rec.get("viral_subtitles"), "viral_subtitles")
    elif fmt == "prompt_response":
        if "prompt" in rec or "response" in rec:
            prompt, response = _text(rec, "prompt"), _text(rec, "response")
        else:
            prompt, response = _text(rec, "user"), _text(rec, "assistant")
        system = _text(rec, "system", required=False)
    elif fmt == "alpaca":
        instr = _text(rec, "instruction")
        inp = _text(rec, "input", required=False)
        prompt = instr if not inp.strip() else f"{instr}\n\n{inp}"
        response = _text(rec, "output")
        system = _text(rec, "system", required=False)
    elif fmt == "sharegpt":
        key = "conversations" if "conversations" in rec else "messages"
        turns = rec.get(key)
        if not isinstance(turns, list) or not turns:
            raise RowError(f"field '{key}' must be a non-empty list of turns")
        msgs = []
        for i, t in enumerate(turns):
            if not isinstance(t, dict):
                raise RowError(f"{key}[{i}] must be an object")
            role = _ROLE.get(str(t.get("from", t.get("role", ""))).lower())
            content = t.get("value", t.get("content"))
            if role is None:
                raise RowError(f"{key}[{i}]: unknown role {t.get('from', t.get('role'))!r} (expected human/gpt/user/assistant/system)")
            if not isinstance(content, str) or not content.strip():
                raise RowError(f"{key}[{i}]: empty or non-string text")
            msgs.append({"role": role, "content": content})
        if msgs[0]["role"] == "system":
            system = msgs.pop(0)["content"]
        last_asst = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=-1)
        if last_asst < 1 or msgs[last_asst - 1]["role"] != "user":
            raise RowError(f"field '{key}' has no user turn followed by an assistant turn")
        prompt, response = msgs[last_asst - 1]["content"], msgs[last_asst]["content"]
        history = msgs[: last_asst - 1]
    else:
        raise DataError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)} or auto")
    hist = json.dumps(history, ensure_ascii=False) if history else ""
    lang = meta.get("language") or rec.get("language")
    if lang is not None and not isinstance(lang, str):
        raise RowError("field 'metadata.language' must be a string")
    lang = (lang or detect_language(prompt + " " + response)).lower()
    h = content_hash(system, hist, prompt, response)
    rid = rec.get("id")
    if fmt == "subtitle":
        meta["original_subtitles"] = rec["original_subtitles"]
        meta["viral_subtitles"] = rec["viral_subtitles"]
    return {"id": str(rid) if rid is not None else h, "format": fmt, "system": system,
            "history": hist, "prompt": prompt, "response": response, "language": lang,
            "meta": json.dumps(meta, ensure_ascii=False) if meta else ""}


def check_format(fmt: str) -> None:
    if fmt != "auto" and fmt not in FORMATS:
        raise DataError(f"data.format: unknown format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")


def undetected(rec: Any) -> str:
    return ("cannot detect the format from this record's fields "
            f"{sorted(rec) if isinstance(rec, dict) else type(rec).__name__}; expected one of "
            "original_subtitles/viral_subtitles, prompt/response, instruction/output, conversations")


def _iter_rows(path: str, fmt: str) -> Iterator[tuple[int, Any, dict | None, str | None, str | None]]:
    """(line, raw record, canonical row or None, reject reason or None, file format so far)."""
    file_fmt = None if fmt == "auto" else fmt
    for line, rec, err in iter_raw_records(path):
        row = None
        if err is None and file_fmt is None:
            file_fmt = detect_record_format(rec)
            if file_fmt is None:
                err = undetected(rec)
        if err is None:
            try:
                row = _normalize(rec, file_fmt)
            except RowError as e:
                err = str(e)
            else:
                row.update(file=path, line=line)
        yield line, rec, row, err, file_fmt


def read_file(path: str, fmt: str = "auto") -> ReadResult:
    """Read one file into canonical rows and rejects (never raises for a bad row)."""
    check_format(fmt)
    res = ReadResult()
    file_fmt = None
    for line, rec, row, err, file_fmt in _iter_rows(path, fmt):
        if row is not None:
            res.rows.append(row)
        else:
            res.rejects.append({"file": path, "line": line, "reason": err, "record": rec})
    res.files[path] = {"format": file_fmt or "unknown", "read": len(res.rows) + len(res.rejects),
                       "kept": len(res.rows), "rejected": len(res.rejects)}
    return res


def check_file(path: str, fmt: str = "auto") -> str:
    """The file's format, read only up to its first valid row (cheap for a good file);
    DataError naming the first problem when it has no valid row at all."""
    first = None
    for line, _rec, row, err, file_fmt in _iter_rows(path, fmt):
        if row is not None:
            return file_fmt
        first = first or (line, err)
    why = f"; first problem at line {first[0]}: {first[1]}" if first else " (file is empty)"
    raise DataError(f"{path}: no valid rows{why}")


def check_pairs(spec: str | list[str], fmt: str = "auto") -> dict[str, str]:
    """Driver-side checks before any Ray work: every file exists, the format is known and
    each file has at least one valid row. Returns path -> detected format."""
    check_format(fmt)
    return {path: check_file(path, fmt) for path in resolve_paths(spec)}


def read_pairs(spec: str | list[str], fmt: str = "auto", require_rows: bool = True) -> ReadResult:
    """Read every file of ``spec``; raise DataError for a file with no valid rows."""
    total = ReadResult()
    for path in resolve_paths(spec):
        r = read_file(path, fmt)
        if require_rows and not r.rows:
            first = r.rejects[0] if r.rejects else None
            why = f"; first problem at line {first['line']}: {first['reason']}" if first else " (file is empty)"
            raise DataError(f"{path}: no valid rows{why}")
        total.rows.extend(r.rows)
        total.rejects.extend(r.rejects)
        total.files.update(r.files)
    return total
