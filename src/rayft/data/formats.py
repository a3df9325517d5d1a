"""Readers for the users' pair formats -> canonical rows (records.PAIRS_SCHEMA).

Formats (detected per file from its first valid record, or named in config):

* ``subtitle``: W1 subtitle pairs ``{"original_subtitles": [{start,end,text}],
  "viral_subtitles": [...], "metadata": {...}}``. Prompt/response are the tracks rendered
  one cue per line as ``[start-end] text`` so timings survive training.
* ``prompt_response``: ``{"prompt", "response"}`` (also ``{"user", "assistant"}``).
* ``alpaca``: ``{"instruction", "input"?, "output"}``.
* ``sharegpt``: ``{"conversations": [{"from"|"role", "value"|"content"}]}``; the last
  assistant turn is the response, earlier turns history. Tool calling (LLaMA-Factory's
  layout): ``function_call`` turns (value: JSON ``{"name", "arguments"}`` or a list of
  them) and ``observation`` turns (the tool's result), with the tool JSON schemas in a
  ``tools`` column (a JSON string or a list).
* ``openai``: OpenAI chat fine-tuning JSONL ``{"messages": [{"role", "content"}], "tools"?}``;
  assistant messages may carry ``tool_calls`` (``function.arguments`` a JSON string or
  object; legacy ``function_call`` too) and ``tool`` messages (``tool_call_id``) hold results.

Message content may be a string or a list of content parts in the common spellings
(``{"type": "text", "text"|"value": ...}``, bare strings); image/audio/file parts are
rejected with their type named. Conversations with tool calls or tools become rows with
``messages``/``tools`` set (records.PAIRS_SCHEMA); the prompt/response/history fields then
hold a text view of the conversation for consumers that read pairs (curate, eval).

Files may be JSONL, JSON (an array, or one object), Parquet or Arrow with those columns;
a directory written by Hugging Face ``datasets.save_to_disk`` (``state.json`` + Arrow files;
for a ``DatasetDict`` its ``train`` split) reads as its Arrow files, without ``datasets``.
Canonical rows written by ``rayft curate`` (PAIRS_SCHEMA Parquet) read back with their
history, messages and tools.
Pure code: no Ray imports. Bad rows become rejects with file, line and reason.
"""
from __future__ import annotations

import glob as _glob
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from .records import content_hash, detect_language, rows_to_table

FORMATS = ("subtitle", "prompt_response", "alpaca", "sharegpt", "openai")
EXTENSIONS = (".jsonl", ".json", ".parquet", ".arrow")
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
    sources: list[dict] = field(default_factory=list)  # data.sources: per source read/kept/rejected/used

    @property
    def rows_read(self) -> int:
        if self.sources:  # a mixture: rows may be repeated or sampled, count what was read
            return sum(s["read"] for s in self.sources)
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
            out.extend(_dir_files(p))
        elif p.is_file():
            out.append(str(p))
        elif any(c in s for c in "*?["):
            found = []
            for f in sorted(_glob.glob(os.path.expanduser(s), recursive=True)):
                if os.path.isfile(f):
                    found.append(f)
                elif os.path.isdir(f):  # a glob over folders (e.g. runs/curated/*/train)
                    try:
                        found.extend(_dir_files(Path(f)))
                    except DataError:
                        pass
            if not found:
                raise DataError(f"data.path: glob {s!r} matches no files (nor folders holding {'/'.join(EXTENSIONS)} files)")
            out.extend(found)
        else:
            raise DataError(f"data.path: file not found: {s}")
    return sorted(dict.fromkeys(out))


def hf_dataset_files(d: Path) -> list[str] | None:
    """The Arrow data files of a folder written by ``datasets.save_to_disk`` (None when
    ``d`` is not one). A ``DatasetDict`` folder gives its ``train`` split (all splits when
    it has none). Read from the folder's own ``state.json``/``dataset_dict.json``."""
    if (d / "dataset_dict.json").is_file():
        try:
            splits = json.loads((d / "dataset_dict.json").read_text()).get("splits") or []
        except (OSError, ValueError, AttributeError) as e:
            raise DataError(f"data.path: {d}/dataset_dict.json is unreadable: {e}") from None
        chosen = ["train"] if "train" in splits else list(splits)
        files = []
        for sp in chosen:
            files.extend(hf_dataset_files(d / sp) or [])
        return files
    if not (d / "state.json").is_file():
        return None
    try:
        state = json.loads((d / "state.json").read_text())
        files = [str(d / f["filename"]) for f in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"data.path: {d}/state.json is not a datasets save_to_disk state: {e}") from None
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise DataError(f"data.path: {d}: Arrow file listed in state.json is missing: {missing[0]}")
    return files


def _dir_files(p: Path) -> list[str]:
    hf = hf_dataset_files(p)
    if hf is not None:
        if not hf:
            raise DataError(f"data.path: datasets folder {p} lists no Arrow files")
        return hf
    found, skip = [], set()
    for f in sorted(p.rglob("*")):
        if f.is_dir() and f not in skip and (hf := hf_dataset_files(f)) is not None:
            found.extend(hf)  # a save_to_disk folder inside: its Arrow files, not its JSON state
            skip.update(f.rglob("*"))
        elif f.is_file() and f.suffix in EXTENSIONS and f not in skip:
            found.append(str(f))
    if not found:
        raise DataError(f"data.path: directory {p} holds no {'/'.join(EXTENSIONS)} files")
    return found


# --------------------------------------------------------------------------- records

def _read_arrow(path: str) -> pa.Table:
    """An Arrow file: IPC stream (what ``datasets`` writes) or IPC file (Feather v2)."""
    import pyarrow.ipc as ipc

    with pa.memory_map(path) as src:
        try:
            return ipc.open_stream(src).read_all()
        except pa.ArrowInvalid:
            pass
    with pa.memory_map(path) as src:
        return ipc.open_file(src).read_all()

def iter_raw_records(path: str) -> Iterator[tuple[int, Any, str | None]]:
    """Yield (line, record or raw text, error or None) for every record in a file."""
    if path.endswith((".parquet", ".arrow")):
        import pyarrow.parquet as pq
        try:
            table = pq.read_table(path) if path.endswith(".parquet") else _read_arrow(path)
        except Exception as e:  # corrupt file: one file-level reject
            yield 0, None, f"unreadable {'Parquet' if path.endswith('.parquet') else 'Arrow'} file: {e}"
            return
        i = 0
        for batch in table.to_batches(max_chunksize=1024):  # Python dicts one batch at a time
            for rec in batch.to_pylist():
                i += 1
                yield i, rec, None
        return
    if path.endswith(".json"):
        try:
            obj = json.loads(Path(path).read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
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
        except RecursionError:
            yield i, text, "malformed JSON: nested too deeply"


def detect_record_format(rec: Any) -> str | None:
    if not isinstance(rec, dict):
        return None
    if "original_subtitles" in rec or "viral_subtitles" in rec:
        return "subtitle"
    if "conversations" in rec:
        return "sharegpt"
    if "messages" in rec and not ("prompt" in rec and "response" in rec):  # not a canonical row
        return "openai"
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
         "bot": "assistant", "model": "assistant", "system": "system", "developer": "system",
         "function_call": "function_call", "observation": "tool", "tool": "tool", "function": "tool",
         "ipython": "tool"}
_TEXT_KEYS = ("text", "value", "content")
_NON_TEXT = ("image", "image_url", "input_image", "audio", "input_audio", "video", "video_url", "file")


def _loads(v: Any, what: str) -> Any:
    if not isinstance(v, str):
        return v
    try:
        return json.loads(v)
    except json.JSONDecodeError as e:
        raise RowError(f"{what} is not valid JSON: {e.msg} at column {e.colno}") from None
    except RecursionError:
        raise RowError(f"{what} is not valid JSON: nested too deeply") from None


def content_text(c: Any, where: str, allow_empty: bool = False) -> str:
    """A message's content -> text: a string, or content parts in the common spellings
    (``{"type": "text", "text"|"value": ...}``, bare strings). Non-text parts are rejected."""
    if isinstance(c, list):
        parts = []
        for k, part in enumerate(c):
            if isinstance(part, str):
                parts.append(part)
                continue
            if not isinstance(part, dict):
                raise RowError(f"{where}.content[{k}]: expected a content part object, got {type(part).__name__}")
            typ = part.get("type", "text")
            if typ in _NON_TEXT or (typ != "text" and any(t in part for t in _NON_TEXT)):
                raise RowError(f"{where}.content[{k}]: {typ!r} content parts are not supported (text only)")
            if typ not in ("text", "input_text", "output_text"):
                raise RowError(f"{where}.content[{k}]: unknown content part type {typ!r}")
            txt = next((part[t] for t in _TEXT_KEYS if isinstance(part.get(t), str)), None)
            if txt is None:
                raise RowError(f"{where}.content[{k}]: text part without a 'text' or 'value' string")
            parts.append(txt)
        c = "".join(parts)
    elif c is None or (isinstance(c, float) and math.isnan(c)):
        c = ""
    elif not isinstance(c, str):
        raise RowError(f"{where}: content must be a string or a list of text parts, got {type(c).__name__}")
    if not allow_empty and not c.strip():
        raise RowError(f"{where}: empty or non-string text")
    return c


def _tool_call(c: Any, where: str) -> dict:
    """One call in any common spelling -> {"type": "function", "id"?, "function": {"name", "arguments": dict}}."""
    if not isinstance(c, dict):
        raise RowError(f"{where}: a tool call must be an object with name and arguments")
    fn = c.get("function") if isinstance(c.get("function"), dict) else c
    name = fn.get("name")
    if not isinstance(name, str) or not name.strip():
        raise RowError(f"{where}: tool call without a 'name'")
    args = fn.get("arguments", fn.get("parameters", {}))
    args = _loads(args, f"{where}.arguments")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise RowError(f"{where}.arguments must be a JSON object, got {type(args).__name__}")
    out = {"type": "function", "function": {"name": name, "arguments": args}}
    if c.get("id") is not None:
        out["id"] = str(c["id"])
    return out


def parse_tools(v: Any) -> list[dict]:
    """The ``tools`` column (a JSON string or a list of schemas) -> OpenAI-style tool list."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip()):
        return []
    tools = _loads(v, "field 'tools'")
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list):
        raise RowError(f"field 'tools' must be a list of tool schemas, got {type(tools).__name__}")
    out = []
    for k, t in enumerate(tools):
        t = _loads(t, f"tools[{k}]")
        if not isinstance(t, dict):
            raise RowError(f"tools[{k}] must be an object (a JSON schema with a name)")
        fn = t.get("function") if isinstance(t.get("function"), dict) else t
        if not isinstance(fn.get("name"), str) or not fn["name"].strip():
            raise RowError(f"tools[{k}]: tool schema without a 'name'")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise RowError(f"tools[{k}].parameters must be a JSON schema object")
        out.append({"type": "function", "function": {k2: v2 for k2, v2 in fn.items() if k2 != "type"}})
    return out


def parse_messages(turns: Any, key: str) -> list[dict]:
    """Turns in the sharegpt or OpenAI layout -> OpenAI-style messages: ``{"role", "content"}``
    plus ``tool_calls`` on assistant messages and ``tool_call_id``/``name`` on tool results."""
    if not isinstance(turns, list) or not turns:
        raise RowError(f"field '{key}' must be a non-empty list of turns")
    msgs: list[dict] = []
    open_ids: set[str] = set()
    for i, t in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(t, dict):
            raise RowError(f"{where} must be an object")
        raw_role = t.get("from", t.get("role"))
        role = _ROLE.get(str(raw_role).lower()) if isinstance(raw_role, str) else None
        if role is None:
            raise RowError(f"{where}: unknown role {raw_role!r} (expected human/gpt/user/assistant/system/"
                           "function_call/observation/tool)")
        content = t.get("value", t.get("content"))
        if role == "function_call":  # sharegpt: the value is the call(s) as JSON
            calls = _loads(content, f"{where} function_call")
            calls = calls if isinstance(calls, list) else [calls]
            if not calls:
                raise RowError(f"{where}: function_call holds no call")
            m = {"role": "assistant", "content": "",
                 "tool_calls": [_tool_call(c, f"{where}.function_call") for c in calls]}
        elif role == "assistant" and (t.get("tool_calls") or t.get("function_call")):
            calls = t.get("tool_calls") or [t.get("function_call")]
            calls = _loads(calls, f"{where}.tool_calls")
            if not isinstance(calls, list):
                raise RowError(f"{where}.tool_calls must be a list")
            m = {"role": "assistant", "content": content_text(content, where, allow_empty=True),
                 "tool_calls": [_tool_call(c, f"{where}.tool_calls[{k}]") for k, c in enumerate(calls)]}
        elif role == "tool":
            if not msgs or not (msgs[-1].get("tool_calls") or msgs[-1]["role"] == "tool"):
                raise RowError(f"{where}: tool result without a preceding tool call")
            if isinstance(content, (dict, list)) and not (isinstance(content, list) and content
                                                          and isinstance(content[0], dict) and "type" in content[0]):
                content = json.dumps(content, ensure_ascii=False)
            m = {"role": "tool", "content": content_text(content, where, allow_empty=True)}
            cid = t.get("tool_call_id")
            if cid is not None:
                if open_ids and str(cid) not in open_ids:
                    raise RowError(f"{where}: tool_call_id {cid!r} matches no earlier tool call")
                m["tool_call_id"] = str(cid)
            if isinstance(t.get("name"), str):
                m["name"] = t["name"]
        else:
            m = {"role": role, "content": content_text(content, where)}
        if m.get("tool_calls"):
            open_ids = {c["id"] for c in m["tool_calls"] if "id" in c}
        msgs.append(m)
    return msgs


def _view_content(m: dict) -> str:
    """A message as plain text for the pair view: tool calls rendered Hermes-style."""
    text = m["content"]
    for c in m.get("tool_calls") or []:
        call = json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]}, ensure_ascii=False)
        text += ("\n" if text else "") + f"<tool_call>\n{call}\n</tool_call>"
    return text


def conversation_fields(msgs: list[dict], tools: list[dict], key: str) -> dict:
    """Messages -> canonical fields. A plain conversation (no tools, no tool turns) gives
    exactly the classic pair: last assistant turn = response, the user turn before it =
    prompt, earlier turns = history. With tools, ``messages``/``tools`` keep the whole
    conversation (what training renders) and the pair fields hold a text view of it."""
    system = ""
    if msgs and msgs[0]["role"] == "system":
        system = msgs.pop(0)["content"]
    if any(m["role"] == "system" for m in msgs):
        raise RowError(f"field '{key}': a system turn is only allowed first")
    last_asst = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=-1)
    msgs = msgs[: last_asst + 1]  # trailing user/tool turns have nothing to learn from
    has_tools = bool(tools) or any(m["role"] == "tool" or m.get("tool_calls") for m in msgs)
    if not has_tools:
        if last_asst < 1 or msgs[last_asst - 1]["role"] != "user":
            raise RowError(f"field '{key}' has no user turn followed by an assistant turn")
        return {"system": system, "history": msgs[: last_asst - 1], "prompt": msgs[last_asst - 1]["content"],
                "response": msgs[last_asst]["content"], "messages": "", "tools": ""}
    last_user = max((i for i, m in enumerate(msgs) if m["role"] == "user"), default=-1)
    if last_user < 0 or last_asst < last_user:
        raise RowError(f"field '{key}' has no user turn followed by an assistant turn")
    history = [{"role": m["role"], "content": _view_content(m)} for m in msgs[:last_user]]
    return {"system": system, "history": history, "prompt": msgs[last_user]["content"],
            "response": _view_content(msgs[last_asst]),
            "messages": json.dumps(msgs, ensure_ascii=False),
            "tools": json.dumps(tools, ensure_ascii=False) if tools else ""}


def _canonical_extra(rec: dict) -> tuple[list, str, str]:
    """history/messages/tools of a canonical row (curated Parquet read back), validated."""
    hist = rec.get("history")
    history = _loads(hist, "field 'history'") if isinstance(hist, str) and hist.strip() else (hist or [])
    if not isinstance(history, list) or not all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                                and isinstance(m.get("role"), str) for m in history):
        raise RowError("field 'history' must be a list of {role, content} turns")
    messages, tools = rec.get("messages") or "", rec.get("tools") or ""
    if messages:
        msgs = _loads(messages, "field 'messages'") if isinstance(messages, str) else messages
        tl = parse_tools(tools)
        messages = json.dumps(parse_messages(msgs, "messages"), ensure_ascii=False)
        tools = json.dumps(tl, ensure_ascii=False) if tl else ""
    return history, messages, tools


def _normalize(rec: Any, fmt: str) -> dict:
    """One raw record -> canonical fields (without file/line). Raises RowError."""
    if not isinstance(rec, dict):
        raise RowError(f"expected a JSON object, got {type(rec).__name__}")
    system, history, meta, messages, tools = "", [], {}, "", ""
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
        history, messages, tools = _canonical_extra(rec)
    elif fmt == "alpaca":
        instr = _text(rec, "instruction")
        inp = _text(rec, "input", required=False)
        prompt = instr if not inp.strip() else f"{instr}\n\n{inp}"
        response = _text(rec, "output")
        system = _text(rec, "system", required=False)
    elif fmt in ("sharegpt", "openai"):
        key = "conversations" if "conversations" in rec else "messages"
        f = conversation_fields(parse_messages(rec.get(key), key), parse_tools(rec.get("tools")), key)
        system, history, prompt, response = f["system"], f["history"], f["prompt"], f["response"]
        messages, tools = f["messages"], f["tools"]
    else:
        raise DataError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)} or auto")
    hist = json.dumps(history, ensure_ascii=False) if history else ""
    lang = meta.get("language") or rec.get("language")
    if lang is not None and not isinstance(lang, str):
        raise RowError("field 'metadata.language' must be a string")
    lang = (lang or detect_language(prompt + " " + response)).lower()
    h = content_hash(system, hist, prompt, response)
    if messages:  # the whole conversation identifies a tool-calling row
        h = content_hash(system, messages + tools, prompt, response)
    rid = rec.get("id")
    if fmt == "subtitle":
        meta["original_subtitles"] = rec["original_subtitles"]
        meta["viral_subtitles"] = rec["viral_subtitles"]
    return {"id": str(rid) if rid is not None else h, "format": fmt, "system": system,
            "history": hist, "prompt": prompt, "response": response, "language": lang,
            "meta": json.dumps(meta, ensure_ascii=False) if meta else "", "messages": messages, "tools": tools}


def check_format(fmt: str) -> None:
    if fmt != "auto" and fmt not in FORMATS:
        raise DataError(f"data.format: unknown format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")


def undetected(rec: Any) -> str:
    return ("cannot detect the format from this record's fields "
            f"{sorted(rec) if isinstance(rec, dict) else type(rec).__name__}; expected one of "
            "original_subtitles/viral_subtitles, prompt/response, instruction/output, conversations, messages")


#: ``columns`` keys (a source's column mapping, like a LLaMA-Factory dataset_info entry):
#: rayft field name -> the file's column name ("query" is an alias of "input").
COLUMN_KEYS = ("prompt", "response", "system", "history", "instruction", "input", "query", "output",
               "conversations", "messages", "tools", "id", "language", "metadata",
               "original_subtitles", "viral_subtitles")


def check_columns(columns: Any, where: str = "columns") -> dict[str, str]:
    if columns is None:
        return {}
    if not isinstance(columns, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in columns.items()):
        raise DataError(f"{where}: expected a mapping of rayft field -> column name")
    bad = sorted(set(columns) - set(COLUMN_KEYS))
    if bad:
        raise DataError(f"{where}: unknown field {bad[0]!r}; expected some of {', '.join(COLUMN_KEYS)}")
    return dict(columns)


def map_columns(rec: Any, columns: dict[str, str] | None) -> Any:
    """A raw record with its columns renamed to rayft's field names (``columns``: field -> column)."""
    if not columns or not isinstance(rec, dict):
        return rec
    out = dict(rec)
    for field_, col in columns.items():
        if col in rec:
            out.pop(col, None)
    for field_, col in columns.items():
        if col in rec:
            out["input" if field_ == "query" else field_] = rec[col]
    return out


def _iter_rows(path: str, fmt: str, columns: dict | None = None
               ) -> Iterator[tuple[int, Any, dict | None, str | None, str | None]]:
    """(line, raw record, canonical row or None, reject reason or None, file format so far)."""
    file_fmt = None if fmt == "auto" else fmt
    for line, rec, err in iter_raw_records(path):
        rec = map_columns(rec, columns)
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


def read_file(path: str, fmt: str = "auto", columns: dict | None = None) -> ReadResult:
    """Read one file into canonical rows and rejects (never raises for a bad row)."""
    check_format(fmt)
    res = ReadResult()
    file_fmt = None
    for line, rec, row, err, file_fmt in _iter_rows(path, fmt, columns):
        if row is not None:
            res.rows.append(row)
        else:
            res.rejects.append({"file": path, "line": line, "reason": err, "record": rec})
    res.files[path] = {"format": file_fmt or "unknown", "read": len(res.rows) + len(res.rejects),
                       "kept": len(res.rows), "rejected": len(res.rejects)}
    return res


def _json_array_head(path: str, first_bytes: int = 1 << 20) -> Iterator[tuple[int, Any, str | None]]:
    """The leading records of a JSON array file, decoded from the start of the file without
    parsing all of it (the driver's check only needs the first valid row). Stops (yields
    nothing more) at anything it cannot decode from the prefix; ``check_file`` then falls
    back to reading the whole file, as before."""
    dec = json.JSONDecoder()
    with open(path, "rb") as f:
        raw = f.read(first_bytes)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:  # a multi-byte character cut by the prefix end
        text = raw[: e.start].decode("utf-8", errors="strict") if e.start > len(raw) - 4 else ""
    pos = len(text) - len(text.lstrip())
    if not text[pos:pos + 1] == "[":
        return
    pos += 1
    for i in itertools.count(1):
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        try:
            rec, end = dec.raw_decode(text, pos)
        except (json.JSONDecodeError, RecursionError):
            return
        yield i, rec, None
        pos = end
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if text[pos:pos + 1] != ",":
            return
        pos += 1


def _parquet_head(path: str) -> Iterator[tuple[int, Any, str | None]]:
    """A Parquet file's records from its first batches (not the whole file in memory);
    stops at any error (``check_file`` then reads the file whole, as before)."""
    import pyarrow.parquet as pq
    try:
        i = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for rec in batch.to_pylist():
                i += 1
                yield i, rec, None
    except Exception:  # noqa: BLE001 - corrupt file: the whole-file path reports it
        return


def check_file(path: str, fmt: str = "auto", columns: dict | None = None) -> str:
    """The file's format, read only up to its first valid row (cheap for a good file);
    DataError naming the first problem when it has no valid row at all.

    A JSON array file is first tried from its first MiB (``_json_array_head``), a Parquet
    file batch by batch (``_parquet_head``), so a big file is not parsed whole on the
    driver; a file that turns out unreadable as a whole is still caught: its records are
    all rejected when read, and ``ray_read.read_ds`` raises the same "no valid rows" error
    for a file with none kept."""
    if path.endswith((".json", ".parquet")):
        file_fmt = None if fmt == "auto" else fmt
        head = _json_array_head(path) if path.endswith(".json") else _parquet_head(path)
        for _line, rec, _err in head:
            rec = map_columns(rec, columns)
            if file_fmt is None:
                file_fmt = detect_record_format(rec)
                if file_fmt is None:
                    continue
            try:
                _normalize(rec, file_fmt)
            except (RowError, DataError):
                continue
            return file_fmt
    first = None
    for line, _rec, row, err, file_fmt in _iter_rows(path, fmt, columns):
        if row is not None:
            return file_fmt
        first = first or (line, err)
    why = f"; first problem at line {first[0]}: {first[1]}" if first else " (file is empty)"
    raise DataError(f"{path}: no valid rows{why}")


def check_pairs(spec: str | list[str], fmt: str = "auto", columns: dict | None = None) -> dict[str, str]:
    """Driver-side checks before any Ray work: every file exists, the format is known and
    each file has at least one valid row. Returns path -> detected format."""
    check_format(fmt)
    return {path: check_file(path, fmt, columns) for path in resolve_paths(spec)}


def read_pairs(spec: str | list[str], fmt: str = "auto", require_rows: bool = True,
               columns: dict | None = None) -> ReadResult:
    """Read every file of ``spec``; raise DataError for a file with no valid rows."""
    total = ReadResult()
    for path in resolve_paths(spec):
        r = read_file(path, fmt, columns)
        if require_rows and not r.rows:
            first = r.rejects[0] if r.rejects else None
            why = f"; first problem at line {first['line']}: {first['reason']}" if first else " (file is empty)"
            raise DataError(f"{path}: no valid rows{why}")
        total.rows.extend(r.rows)
        total.rejects.extend(r.rejects)
        total.files.update(r.files)
    return total
