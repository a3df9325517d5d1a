"""Per-row curation filters: pure functions ``batch -> batch`` over column batches (no Ray).

A batch is a dict of equal-length lists (``reader.WORK_COLUMNS``). A filter never drops a
row: it sets ``_filter`` (its name) and ``_reason`` on the rows it removes and leaves
rows another filter already removed untouched, so ``rows in = kept + removed`` holds per
filter by construction. Order (``apply_row_filters``): normalize -> low_value -> secrets ->
language; dedup and splits need the whole dataset and run on the driver (run.py).
"""
from __future__ import annotations

import bisect
import hashlib
import json
import re
import unicodedata

import pyarrow as pa

from ..data.records import PAIR_COLUMNS, PAIRS_SCHEMA, detect_language, map_message_texts, message_texts
from . import dedup as dd
from .config import CurateConfig, LanguageCfg, LowValueCfg, NormalizeCfg, SecretsCfg
from ..data.reader import Batch
from .secrets import KINDS, find_secrets, mask

TEXT_FIELDS = ("system", "prompt", "response")
_CTRL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e"
                   "\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]")
_HSPACE = re.compile(r"[^\S\n]+")
_EDGE = re.compile(r" ?\n ?")
_BLANKS = re.compile(r"\n{3,}")


def _alive(b: Batch) -> list[int]:
    return [i for i, f in enumerate(b["_filter"]) if not f]


def _copy(b: Batch, *cols: str) -> Batch:
    out = dict(b)
    for c in cols:
        out[c] = list(b[c])
    return out


# --------------------------------------------------------------------------- 1 normalize

def _needs_space_fix(s: str, nfkc: bool) -> bool:
    """Cheap substring checks instead of a regex scan (most text is already clean). After
    NFKC and control stripping the only horizontal whitespace left is ' ' and '\\t'."""
    if not nfkc and not s.isascii():
        return True
    return ("  " in s or "\t" in s or " \n" in s or "\n " in s or "\n\n\n" in s or "\u2028" in s
            or "\u2029" in s or s[:1].isspace() or s[-1:].isspace())


def normalize_str(s: str, cfg: NormalizeCfg) -> str:
    """NFKC, no control/invisible characters, collapsed spaces, stripped lines (newlines kept)."""
    if cfg.nfkc and not unicodedata.is_normalized("NFKC", s):  # the check is ~30x cheaper
        s = unicodedata.normalize("NFKC", s)
    if "\r" in s:
        s = s.replace("\r\n", "\n").replace("\r", "\n")
    if cfg.strip_control:
        s = _CTRL.sub("", s)
    if cfg.whitespace and _needs_space_fix(s, cfg.nfkc):
        s = _BLANKS.sub("\n\n", _EDGE.sub("\n", _HSPACE.sub(" ", s))).strip()
    return s


def timing_problem(meta: str) -> str | None:
    """Why a subtitle row's timings are not sane (0 <= start < end, starts in order), else None."""
    try:
        md = json.loads(meta) if meta else {}
    except json.JSONDecodeError:
        return None
    for track in ("original_subtitles", "viral_subtitles"):
        prev = None
        for k, cue in enumerate(md.get(track) or []):
            s, e = cue.get("start"), cue.get("end")
            if s < 0 or e < 0:
                return f"{track}[{k}]: negative time (start {s}, end {e})"
            if not s < e:
                return f"{track}[{k}]: start {s} is not before end {e}"
            if prev is not None and s < prev:
                return f"{track}[{k}]: starts at {s}, before the previous cue ({prev})"
            prev = s
    return None


def normalize_batch(b: Batch, cfg: NormalizeCfg) -> Batch:
    if not cfg.enabled:
        return b
    out = _copy(b, "system", "prompt", "response", "history", "messages", "_filter", "_reason")
    for i in _alive(b):
        for f in TEXT_FIELDS:
            if out[f][i]:
                out[f][i] = normalize_str(out[f][i], cfg)
        if out["messages"][i]:  # tool conversations: the texts training renders
            out["messages"][i] = map_message_texts(out["messages"][i], lambda t: normalize_str(t, cfg))
        if out["history"][i]:
            msgs = json.loads(out["history"][i])
            for m in msgs:
                m["content"] = normalize_str(m["content"], cfg)
            out["history"][i] = json.dumps(msgs, ensure_ascii=False)
        why = None
        if not out["prompt"][i]:
            why = "prompt is empty after normalization"
        elif not out["response"][i]:
            why = "response is empty after normalization"
        elif cfg.check_timings and b["format"][i] == "subtitle":
            why = timing_problem(b["meta"][i])
        if why:
            out["_filter"][i], out["_reason"][i] = "normalize", why
    return out


# --------------------------------------------------------------------------- 2 low value
_NONWORD = re.compile(r"[\W_]+")
_REPEAT = re.compile(r"(.)\1+")


def reply_key(s: str) -> str:
    """Letters and digits only, case-folded: 'OK!!' -> 'ok', '好的。' -> '好的', '👍' -> ''."""
    return _NONWORD.sub("", s.casefold())


def _repeats_listed(key: str, listed: frozenset[str]) -> bool:
    """'okok', 'thanksthanks': a listed reply said several times."""
    if len(key) > 24:
        return False
    return any(len(key) % n == 0 and key[:n] in listed and key == key[:n] * (len(key) // n)
               for n in range(1, len(key) // 2 + 1))


_WORD = re.compile(r"[^\W_]")


def low_value_reason(prompt: str, response: str, cfg: LowValueCfg, listed: frozenset[str]) -> str | None:
    if len(response) > 64:  # fast path for long replies: only "no letters at all" or a prompt copy
        if not _WORD.search(response):
            return "reply has only punctuation, symbols or emoji" if cfg.drop_punct_only else None
        if cfg.drop_prompt_copy and len(response) <= len(prompt) + 8:
            key, pkey = reply_key(response), reply_key(prompt)
            if key == pkey or (key in pkey and len(key) >= cfg.copy_ratio * len(pkey)):
                return "reply copies the prompt"
        return None
    key = reply_key(response)
    if not key:
        return "reply has only punctuation, symbols or emoji" if cfg.drop_punct_only else None
    if key in listed or _REPEAT.sub(r"\1", key) in listed or _repeats_listed(key, listed):
        return f"low-value reply {response[:40]!r}"
    if len(key) < cfg.min_chars:
        return f"reply shorter than {cfg.min_chars} letters/digits"
    if cfg.drop_prompt_copy and len(key) <= len(prompt):  # a longer reply cannot be inside the prompt
        pkey = reply_key(prompt)
        if key == pkey or (key in pkey and len(key) >= cfg.copy_ratio * len(pkey)):
            return "reply copies the prompt"
    return None


def low_value_list(cfg: LowValueCfg) -> frozenset[str]:
    keys = {reply_key(x) for x in [*cfg.replies_en, *cfg.replies_zh]}
    return frozenset(k for k in keys | {_REPEAT.sub(r"\1", k) for k in keys} if k)


def low_value_batch(b: Batch, cfg: LowValueCfg) -> Batch:
    if not cfg.enabled:
        return b
    listed = low_value_list(cfg)
    out = _copy(b, "_filter", "_reason")
    for i in _alive(b):
        why = low_value_reason(b["prompt"][i], b["response"][i], cfg, listed)
        if why:
            out["_filter"][i], out["_reason"][i] = "low_value", why
    return out


# --------------------------------------------------------------------------- 3 secrets

def _scan(text: str, kinds: tuple[str, ...], cfg: SecretsCfg):
    return find_secrets(text, kinds, cfg.entropy_min_len, cfg.entropy_bits) if text else []


_PART_SEP = "\n\x00\n"  # no detector matches across a NUL


def _scan_parts(parts: list[str], kinds: tuple[str, ...], cfg: SecretsCfg) -> list[list]:
    """Spans per part, found with one scan over all parts of a row."""
    found: list[list] = [[] for _ in parts]
    spans = _scan(_PART_SEP.join(parts), kinds, cfg)
    if not spans:
        return found
    starts, pos = [], 0
    for p in parts:
        starts.append(pos)
        pos += len(p) + len(_PART_SEP)
    for sp in spans:
        k = bisect.bisect_right(starts, sp.start) - 1
        end = min(sp.end - starts[k], len(parts[k]))
        found[k].append(sp._replace(start=sp.start - starts[k], end=end))
    return found


def secrets_batch(b: Batch, cfg: SecretsCfg) -> Batch:
    """Drop rows holding a 'drop' kind; mask the spans of 'mask' kinds (``_masked`` lists them)."""
    kinds = tuple(k for k in KINDS if getattr(cfg, k) != "off")
    if not cfg.enabled or not kinds:
        return b
    out = _copy(b, "system", "prompt", "response", "history", "messages", "_filter", "_reason", "_masked")
    for i in _alive(b):
        msgs = json.loads(b["history"][i]) if b["history"][i] else []
        conv = message_texts(b["messages"][i])  # tool conversations: every text training renders
        parts = [b[f][i] for f in TEXT_FIELDS] + [m["content"] for m in msgs] + conv
        found = _scan_parts(parts, kinds, cfg)
        if not any(found):
            continue
        names = list(TEXT_FIELDS) + ["history"] * len(msgs) + ["messages"] * len(conv)
        drop = sorted({f"{s.kind} in {n}" for n, ss in zip(names, found) for s in ss if getattr(cfg, s.kind) == "drop"})
        if drop:
            out["_filter"][i], out["_reason"][i] = "secrets", "secrets: " + ", ".join(drop)
            continue
        for k, f in enumerate(TEXT_FIELDS):
            if found[k]:
                out[f][i] = mask(b[f][i], found[k], cfg.mask_format)
        if any(found[len(TEXT_FIELDS):len(TEXT_FIELDS) + len(msgs)]):
            for m, ss in zip(msgs, found[len(TEXT_FIELDS):]):
                m["content"] = mask(m["content"], ss, cfg.mask_format)
            out["history"][i] = json.dumps(msgs, ensure_ascii=False)
        if conv and any(found[len(TEXT_FIELDS) + len(msgs):]):
            spans = iter(found[len(TEXT_FIELDS) + len(msgs):])
            out["messages"][i] = map_message_texts(b["messages"][i], lambda t: mask(t, next(spans), cfg.mask_format))
        out["_masked"][i] = ",".join(sorted({s.kind for ss in found for s in ss}))
    return out


def normalized_view(s: str) -> tuple[str, list[int]]:
    """The text the detectors see after the normalize filter (NFKC, no control/invisible
    characters), and for each of its characters the index of the raw character it came from.

    Per-character NFKC: a secret split by zero-width characters ('pass\u200bword') or
    written in full-width forms ('ｐａｓｓｗｏｒｄ：ｈｕｎｔｅｒ２２') reads here as it does to
    the drop decision, and every span found maps back onto the raw characters."""
    out: list[str] = []
    idx: list[int] = []
    for i, c in enumerate(s):
        if c.isascii() and c.isprintable() or c in "\n\t":
            out.append(c)
            idx.append(i)
            continue
        t = _CTRL.sub("", unicodedata.normalize("NFKC", c))
        if c == "\r":
            t = "\n"
        out.append(t)
        idx.extend([i] * len(t))
    return "".join(out), idx


def redact_text(text: str, cfg: SecretsCfg, kinds: tuple[str, ...] = KINDS) -> str:
    """``text`` with every secret the detectors find in its normalized view masked in the raw
    string (the same view the drop decision scans), whatever invisible or full-width
    characters hide it."""
    if not text:
        return text
    if text.isascii() and text.isprintable():
        return mask(text, _scan(text, kinds, cfg), cfg.mask_format)
    view, idx = normalized_view(text)
    spans = _scan(view, kinds, cfg)
    if not spans:
        return text
    raw = [sp._replace(start=idx[sp.start], end=idx[sp.end - 1] + 1) for sp in spans if sp.end > sp.start]
    return mask(text, raw, cfg.mask_format)


def redact_record(record, cfg: SecretsCfg):
    """A reject's original record with every detected secret masked (all kinds), detected on
    the normalized view of each string (``redact_text``). Keys are redacted too."""
    if isinstance(record, str):
        return redact_text(record, cfg)
    if isinstance(record, list):
        return [redact_record(r, cfg) for r in record]
    if isinstance(record, dict):
        return {redact_text(k, cfg) if isinstance(k, str) else k: redact_record(v, cfg) for k, v in record.items()}
    return record


# --------------------------------------------------------------------------- 6 language
_LANG_ALIASES = {"chinese": "zh", "cn": "zh", "zho": "zh", "chi": "zh", "english": "en", "eng": "en"}


def canonical_language(code: str, text: str) -> str:
    code = (code or "").strip().lower().replace("_", "-").split("-")[0]
    code = _LANG_ALIASES.get(code, code)
    if not code or code == "und":
        code = detect_language(text)
    return code


def language_batch(b: Batch, cfg: LanguageCfg) -> Batch:
    out = _copy(b, "language", "_filter", "_reason")
    keep = {canonical_language(k, "") for k in cfg.keep}
    for i in _alive(b):
        lang = canonical_language(b["language"][i], b["prompt"][i] + " " + b["response"][i])
        out["language"][i] = lang
        if keep and lang not in keep:
            out["_filter"][i], out["_reason"][i] = "language", f"language {lang!r} not in language.keep {sorted(keep)}"
    return out


# --------------------------------------------------------------------------- all, + dedup keys

def apply_row_filters(b: Batch, cfg: CurateConfig) -> Batch:
    b = normalize_batch(b, cfg.normalize)
    b = low_value_batch(b, cfg.low_value)
    b = secrets_batch(b, cfg.secrets)
    return language_batch(b, cfg.language)


def row_hash(system: str, history: str, prompt: str, response: str) -> str:
    """Exact-dedup key: SHA-1 of the normalized fields with all whitespace runs as one space
    (records.content_hash without its NFKC pass, which the normalize filter already did)."""
    h = hashlib.sha1()
    for part in (system, history, prompt, response):
        h.update(" ".join(part.split()).encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()


def dedup_keys(b: Batch, cfg: CurateConfig) -> tuple[list[str], list[str], "pa.Array"]:
    """Exact-dedup hash, near-dup text and MinHash signature (FixedSizeList<uint32>) per row
    (empty / zero for removed rows)."""
    import numpy as np

    d = cfg.dedup
    alive = _alive(b)
    hashes, texts = [""] * len(b["_filter"]), [""] * len(b["_filter"])
    for i in alive:
        hashes[i] = row_hash(b["system"][i], b["history"][i], b["prompt"][i], b["response"][i])
    num_perm = d.bands * d.rows
    sig = np.zeros((len(hashes), num_perm), dtype=np.uint32)
    if (d.near or cfg.embed.model) and alive:
        for i in alive:
            texts[i] = dd.dedup_text(b["system"][i], b["history"][i], b["prompt"][i], b["response"][i], tuple(d.fields))
        if d.near:
            sig[alive] = dd.minhash([texts[i] for i in alive], d.ngram, num_perm, d.seed)
    return hashes, texts, pa.FixedSizeListArray.from_arrays(pa.array(sig.ravel(), pa.uint32()), num_perm)


def process_task(task: dict, cfg: CurateConfig) -> pa.Table:
    """One read task end to end (read, per-row filters, dedup keys) -> Arrow table."""
    from ..data.reader import read_task

    b = apply_row_filters(read_task(task), cfg)
    hashes, texts, sig = dedup_keys(b, cfg)
    arrays = [pa.array(b[f.name], f.type) for f in PAIRS_SCHEMA]
    arrays += [pa.array(b[c], pa.string()) for c in ("_raw", "_filter", "_reason", "_masked")]
    arrays += [pa.array(b["_golden"], pa.bool_()), pa.array(hashes, pa.string()), pa.array(texts, pa.string()), sig]
    names = [*PAIR_COLUMNS, "_raw", "_filter", "_reason", "_masked", "_golden", "_hash", "_dtext", "_sig"]
    return pa.Table.from_arrays(arrays, names=names)
