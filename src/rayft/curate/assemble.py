"""The global (driver-side) steps: exact dedup, MinHash near-dup, embedding near-dup, splits.

Pure (numpy/pyarrow, no Ray). Input is the concatenation of every task's table
(``filters.process_task``); rows are put in a fixed processing order first (golden rows,
then by file and line) so the kept representative of every duplicate group is stable.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..data.records import split_of, split_u
from . import dedup as dd
from .config import CurateConfig
from .output import _safe as lang_dir

#: a language with fewer validation rows than this is warned about (stderr + report.json split.warnings)
WARN_VAL_ROWS = 10


@dataclass
class Working:
    """The run's rows in processing order with mutable status columns."""
    table: pa.Table
    filt: list[str]
    reason: list[str]
    split: list[str] = field(default_factory=list)
    prior_dup: dict[int, int] = field(default_factory=dict)  # row -> index of the accepted row it duplicates

    @classmethod
    def of(cls, table: pa.Table) -> "Working":
        table = table.sort_by([("_golden", "descending"), ("file", "ascending"), ("line", "ascending")])
        return cls(table, table["_filter"].to_pylist(), table["_reason"].to_pylist())

    def alive(self) -> list[int]:
        return [i for i, f in enumerate(self.filt) if not f]

    def col(self, name: str) -> list:
        return self.table[name].to_pylist()

    def finish(self) -> pa.Table:
        t = self.table.drop_columns(["_filter", "_reason"])
        t = t.append_column("_filter", pa.array(self.filt, pa.string()))
        t = t.append_column("_reason", pa.array(self.reason, pa.string()))
        split = self.split or [""] * t.num_rows
        return t.append_column("_split", pa.array(split, pa.string()))


def _where(files: list, lines: list, i: int) -> str:
    return f"{files[i]}:{lines[i]}"


def exact_dedup(w: Working, prior: pa.Table, cfg: CurateConfig) -> int:
    """Mark exact duplicates (same normalized content hash) of earlier rows or of the ledger."""
    if not cfg.dedup.exact:
        return 0
    alive = w.alive()
    hashes = w.table["_hash"].to_pylist()
    files, lines = w.col("file"), w.col("line")
    pf, pl = prior["file"].to_pylist(), prior["line"].to_pylist()
    prior_map = {h: ("prior", k) for k, h in enumerate(prior["hash"].to_pylist())}
    dup = dd.exact_duplicates([hashes[i] for i in alive], prior_map)
    n = 0
    for k, d in enumerate(dup):
        if d is None:
            continue
        i = alive[k]
        w.filt[i] = "exact_dedup"
        if isinstance(d, tuple):
            w.prior_dup[i] = d[1]
            w.reason[i] = f"exact duplicate of previously accepted {pf[d[1]]}:{pl[d[1]]}"
        else:
            w.reason[i] = f"exact duplicate of {_where(files, lines, alive[d])}"
        n += 1
    return n


def signatures(table: pa.Table, rows: list[int], column: str = "_sig") -> np.ndarray:
    col = table[column].combine_chunks() if rows else None
    if not rows:
        return np.zeros((0, 0), np.uint32)
    width = col.type.list_size
    flat = np.asarray(col.flatten()).reshape(-1, width)
    return flat[np.asarray(rows)]


def texts_of(w: Working, rows: list[int]):
    """k -> near-dup text of ``rows[k]`` (computed in the read tasks: column ``_dtext``)."""
    col = w.table["_dtext"]
    return lambda k: col[rows[k]].as_py()


def near_dedup(w: Working, prior: pa.Table, cfg: CurateConfig) -> int:
    """MinHash LSH candidates -> exact Jaccard -> greedy representatives (ledger rows first)."""
    d = cfg.dedup
    if not d.near:
        return 0
    alive = w.alive()
    if not alive:
        return 0
    num_perm = d.bands * d.rows
    prior_sig = np.asarray(prior["sig"].combine_chunks().flatten()).reshape(-1, num_perm) if prior.num_rows else \
        np.zeros((0, num_perm), np.uint32)
    sig = np.concatenate([prior_sig, signatures(w.table, alive)])
    prior_text = prior["dtext"].to_pylist()
    new_text = texts_of(w, alive)
    n_prior = len(prior_text)

    def text(k: int) -> str:
        return prior_text[k] if k < n_prior else new_text(k - n_prior)

    rep, sim = dd.near_duplicates(sig, text, d.threshold, d.ngram, d.bands, d.rows, n_prior, d.max_bucket)
    return _mark_duplicates(w, alive, rep, n_prior, prior, "near_dedup",
                            lambda where, k: f"near duplicate of {where} (jaccard {sim[k]:.2f})")


def _mark_duplicates(w: Working, rows: list[int], rep: np.ndarray, n_prior: int, prior: pa.Table, filt: str,
                     reason) -> int:
    """Reject every row whose representative ``rep[k] >= 0`` is another row: indices below
    ``n_prior`` are previously accepted rows (``prior``), the rest are ``rows[k - n_prior]``."""
    files, lines = w.col("file"), w.col("line")
    hits = np.flatnonzero(rep >= 0).tolist()
    pf, pl = (prior["file"].to_pylist(), prior["line"].to_pylist()) if hits and n_prior else ([], [])
    for k in hits:
        i, r = rows[k - n_prior], int(rep[k])
        where = f"previously accepted {pf[r]}:{pl[r]}" if r < n_prior else _where(files, lines, rows[r - n_prior])
        if r < n_prior:
            w.prior_dup[i] = r
        w.filt[i] = filt
        w.reason[i] = reason(where, k)
    return len(hits)


def embed_dedup(w: Working, rows: list[int], emb: np.ndarray, prior_emb: np.ndarray | None,
                prior: pa.Table, cfg: CurateConfig) -> int:
    """Cosine near-dup over sentence embeddings of ``rows`` (alive rows, processing order)."""
    if prior_emb is None or prior_emb.size == 0:
        prior_emb = np.zeros((0, emb.shape[1]), np.float32)
    allv = np.concatenate([prior_emb.astype(np.float32), emb.astype(np.float32)])
    n_prior = prior_emb.shape[0]
    rep, sim = dd.embedding_duplicates(allv, cfg.embed.threshold, n_prior)
    return _mark_duplicates(w, rows, rep, n_prior, prior, "embed_dedup",
                            lambda where, k: f"embedding near duplicate of {where} (cosine {sim[k]:.3f})")


def assign_splits(w: Working, cfg: CurateConfig, prior_val: dict[str, int] | None = None) -> dict:
    """golden (golden files, or golden_fraction by hash) > val (val_fraction by hash) > train.

    Then, with ``val_fraction > 0``, each language is topped up to ``split.min_val_rows``
    validation rows (``prior_val``: its val rows published by earlier runs, keyed by output
    folder name, count too): the language's training rows of this run nearest to the
    validation side of the hash split move to val, never more than half of this run's rows
    of the language; deterministic, and a large language is untouched. Returns the
    report's ``split`` entry: ``min_val_rows``, ``moved_to_val`` per language, and
    ``warnings`` naming each language left under ``WARN_VAL_ROWS`` validation rows."""
    s = cfg.split
    hashes, golden = w.table["_hash"].to_pylist(), w.table["_golden"].to_pylist()
    w.split = [""] * len(hashes)
    for i in w.alive():
        if golden[i] or (s.golden_fraction > 0 and split_of(hashes[i], s.golden_fraction, s.salt + "golden") == "val"):
            w.split[i] = "golden"
        else:
            w.split[i] = split_of(hashes[i], s.val_fraction, s.salt)
    info: dict = {"min_val_rows": s.min_val_rows, "moved_to_val": {}, "warnings": []}
    if s.val_fraction <= 0:  # no validation set asked for
        return info
    langs = w.col("language")
    by_lang: dict[str, list[int]] = {}
    for i in w.alive():
        if w.split[i] != "golden":
            by_lang.setdefault(langs[i] or "", []).append(i)
    prior_val = prior_val or {}
    for lang in sorted(by_lang):
        rows = by_lang[lang]
        have_run = sum(w.split[i] == "val" for i in rows)
        have = have_run + prior_val.get(lang_dir(lang), 0)
        want = min(s.min_val_rows - have, len(rows) // 2 - have_run)
        if want > 0:
            train = sorted((i for i in rows if w.split[i] == "train"), key=lambda i: (split_u(hashes[i], s.salt), i))
            for i in train[:want]:
                w.split[i] = "val"
            info["moved_to_val"][lang or "und"] = min(want, len(train))
            have += min(want, len(train))
        if have < WARN_VAL_ROWS:
            n = len(rows)
            info["warnings"].append(
                f"language {lang or 'und'!r}: {have} validation rows ({n} non-golden rows this run); under "
                f"{WARN_VAL_ROWS} its validation loss and the gate say little: add rows of this language, "
                f"raise split.min_val_rows (at most half a run's rows move) or give train a data.val_path")
    return info


def kept_mask(table: pa.Table) -> pa.Array:
    return pc.equal(table["_filter"], "")


def golden_conflicts(w: Working, prior: pa.Table, limit: int = 20) -> dict:
    """Golden-file rows removed because they duplicate a row an earlier run accepted into
    train/val (a golden file added after its rows were already curated): golden and
    train stay disjoint, but the golden set lost these rows and train holds their copies."""
    golden = w.table["_golden"].to_pylist()
    psplit = prior["split"].to_pylist() if "split" in prior.column_names else [""] * prior.num_rows
    hits = sorted(i for i, r in w.prior_dup.items() if golden[i] and psplit[r] != "golden")
    files, lines = w.col("file"), w.col("line")
    pf, pl = prior["file"].to_pylist(), prior["line"].to_pylist()
    return {"count": len(hits), "examples": [
        {"golden": _where(files, lines, i), "accepted": f"{pf[w.prior_dup[i]]}:{pl[w.prior_dup[i]]}",
         "accepted_split": psplit[w.prior_dup[i]] or "unknown"} for i in hits[:limit]]}
