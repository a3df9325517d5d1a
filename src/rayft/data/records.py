"""The Arrow schemas every stage agrees on."""
from __future__ import annotations

import hashlib
import json
import unicodedata

import pyarrow as pa
import regex

#: One training pair. ``history`` holds earlier turns of a multi-turn conversation as a
#: JSON list of {"role", "content"}; by default loss is taken only on ``response``
#: (``data.train_on=all_assistant``: on every assistant turn of history too).
#:
#: Tool-calling conversations do not fit prompt -> response (tool calls and tool results
#: sit between the user's turn and the answer), so they also carry ``messages``: the whole
#: conversation after the system turn, OpenAI-style (assistant ``tool_calls`` with
#: ``function.arguments`` as an object, ``tool`` messages with ``tool_call_id``), and
#: ``tools``: the JSON list of tool schemas. When ``messages`` is set, training renders it
#: (with the tools); system/history/prompt/response then hold a text view of the same
#: conversation (tool calls as ``<tool_call>`` JSON) for consumers that read pairs
#: (curate's filters and dedup, eval). Both are "" for every other row, so plain pairs are
#: unchanged.
PAIRS_SCHEMA = pa.schema([
    pa.field("id", pa.string()),          # the input row's id, else its content hash
    pa.field("file", pa.string()),        # source file the row came from
    pa.field("line", pa.int64()),         # 1-based line (JSONL) or record index (JSON array, Parquet)
    pa.field("format", pa.string()),      # subtitle | prompt_response | alpaca | sharegpt
    pa.field("system", pa.string()),
    pa.field("history", pa.string()),
    pa.field("prompt", pa.string()),
    pa.field("response", pa.string()),
    pa.field("language", pa.string()),    # "en", "zh", ... (metadata, else detected)
    pa.field("meta", pa.string()),        # JSON: the row's metadata (subtitle timings live here)
    pa.field("messages", pa.string()),    # JSON: whole tool-calling conversation, else ""
    pa.field("tools", pa.string()),       # JSON: tool schemas of that conversation, else ""
])

PAIR_COLUMNS = [f.name for f in PAIRS_SCHEMA]


#: letters (Unicode categories L*: exactly what ``str.isalpha`` accepts) and the CJK ranges
#: among them, as regex classes so a row is scanned in C, not character by character in Python
_NOT_LETTER = regex.compile(r"\P{L}+")
_NOT_CJK = regex.compile("[^\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
                         "\U00020000-\U0002a6df]+")


def detect_language(text: str, threshold: float = 0.2) -> str:
    """'zh' when CJK characters are at least ``threshold`` of the letters, else 'en'.

    Enough to route en/zh pairs (W1); a row's own ``metadata.language`` always wins.
    """
    letters = _NOT_LETTER.sub("", text)
    if not letters:
        return "und"
    return "zh" if len(_NOT_CJK.sub("", letters)) / len(letters) >= threshold else "en"


def normalize_text(text: str) -> str:
    """NFKC + collapsed whitespace: the form hashes and dedup compare."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def content_hash(system: str, history: str, prompt: str, response: str) -> str:
    """Stable hash of a pair's normalized content (split assignment, dedup, ids)."""
    h = hashlib.sha1()
    for part in (system, history, prompt, response):
        h.update(normalize_text(part or "").encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()


def language_reject_reason(row_language: str, wanted: str) -> str:
    """The reject reason of a row that ``data.language`` drops (train's driver and Ray Data paths)."""
    return f"language {row_language!r} != data.language {wanted!r}"


def split_of(row_hash: str, val_fraction: float, salt: str = "") -> str:
    """Deterministic train/val assignment from a content hash: a rerun gives the same split."""
    if val_fraction <= 0:
        return "train"
    return "val" if split_u(row_hash, salt) < val_fraction else "train"


def empty_pairs_table() -> pa.Table:
    return PAIRS_SCHEMA.empty_table()


def rows_to_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=PAIRS_SCHEMA)


def history_to_messages(history: str) -> list[dict]:
    return json.loads(history) if history else []


def conform_pairs(table: pa.Table) -> pa.Table:
    """A table with PAIRS_SCHEMA columns -> exactly PAIRS_SCHEMA; columns added to the schema
    later (messages, tools) are filled with "" so Parquet written before them still reads."""
    for f in PAIRS_SCHEMA:
        if f.name not in table.column_names and f.name in ("messages", "tools"):
            table = table.append_column(f.name, pa.array([""] * table.num_rows, pa.string()))
    return table.select(PAIR_COLUMNS).cast(PAIRS_SCHEMA)


def _map_leaves(v, fn):
    if isinstance(v, str):
        return fn(v)
    if isinstance(v, list):
        return [_map_leaves(x, fn) for x in v]
    if isinstance(v, dict):
        return {k: _map_leaves(x, fn) for k, x in v.items()}
    return v


def map_message_texts(messages: str, fn) -> str:
    """A ``messages`` JSON with ``fn`` applied to every text a user could have written in it
    (each message's content and every string inside tool-call arguments), in a fixed order;
    curate's normalize and secrets filters use it so they cover tool conversations too."""
    if not messages:
        return messages
    msgs = json.loads(messages)
    for m in msgs:
        m["content"] = fn(m.get("content") or "")
        for c in m.get("tool_calls") or []:
            c["function"]["arguments"] = _map_leaves(c["function"].get("arguments", {}), fn)
    return json.dumps(msgs, ensure_ascii=False)


def message_texts(messages: str) -> list[str]:
    out: list[str] = []
    map_message_texts(messages, lambda t: out.append(t) or t)
    return out


def split_u(row_hash: str, salt: str = "") -> float:
    """The uniform number ``split_of`` compares with the validation fraction."""
    h = hashlib.sha1((salt + row_hash).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def ensure_min_val(train: list[dict], val: list[dict], min_rows: int, salt: str = "",
                   warn_below: int = 10) -> tuple[list[dict], list[dict], list[str]]:
    """Per language, move training rows into validation until it has ``min_rows`` (never
    more than half the language's rows), taking the rows nearest to the validation side of
    the hash split, so a rerun moves the same rows and they are never trained on (an eval
    that rebuilds the split by hash sees a subset of this validation set). Returns
    (train, val, warnings); a warning names each language left under ``warn_below`` rows."""
    def lang_of(r):
        return r.get("language") or "und"

    def u(r):
        return split_u(content_hash(r["system"], r["history"], r["prompt"], r["response"]), salt)

    langs = sorted({lang_of(r) for r in train + val})
    notes = []
    if min_rows > 0:
        move = set()
        for lang in langs:
            t = [i for i, r in enumerate(train) if lang_of(r) == lang]
            have = sum(1 for r in val if lang_of(r) == lang)
            want = min(min_rows, (len(t) + have) // 2) - have
            if want > 0:
                move.update(sorted(t, key=lambda i: u(train[i]))[:want])
        val = val + [r for i, r in enumerate(train) if i in move]
        train = [r for i, r in enumerate(train) if i not in move]
    for lang in langs:
        n_val = sum(1 for r in val if lang_of(r) == lang)
        if n_val < warn_below:
            n = n_val + sum(1 for r in train if lang_of(r) == lang)
            notes.append(f"language {lang!r}: {n_val} validation rows of {n} (under {warn_below}: its validation "
                         "loss says little; set data.min_val_rows or give data.val_path)")
    return train, val, notes
