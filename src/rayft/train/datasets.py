"""The data phase of `rayft train`: check the inputs, read and split the rows, tokenize them
into per-worker Ray datasets.

``check_inputs`` runs on the driver before Ray starts (bad files, unknown format, no valid
row, unknown model: one clear message). ``prepare`` reads with Ray Data (bad rows ->
rejects), keeps ``data.language`` rows of the training and the validation data, and splits
by content hash. ``tokenized_datasets`` tokenizes with Ray Data and cuts one piece per
worker; ``PreSplit`` hands worker i its piece. `rayft sweep` calls the same three.

With ``data.path`` (the default reader), the rows never come to the driver: the read
tasks (``ray_read.read_ds``) apply ``data.language`` and the content-hash split as
per-row columns and number each row within its task; the driver adds up per-task counts
into offsets (row_idx = offset of the task + rank in the task), works out the few rows
``data.min_val_rows`` moves into validation from per-block candidates, and keeps only
the dataset refs, the counts and the rejects. Worker i's piece is the rows with row_idx
in its own range, so it is the same rows every run whatever order Ray ran the tasks in.
``data.sources`` mixtures (sampled on the driver, mixture.py) and an explicit in-process
``read`` still build the split tables on the driver.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError
from ..data.formats import DataError, ReadResult, check_pairs
from ..data.mixture import check_mixture, read_mixture
from ..data.ray_read import KEPT, read_ds, read_pairs_ray
from ..data.records import (PAIR_COLUMNS, content_hash, ensure_min_val, language_reject_reason, rows_to_table,
                             split_of)
from .config import TrainConfig


@dataclass
class Split:
    """One side (train or val) of the split, still in Ray's object store: ``ds`` (a
    materialized Dataset) and the ``number_rows`` keyword arguments that select and number
    its rows. ``rows``: how many."""
    ds: object
    kwargs: dict
    rows: int

    def numbered(self, lo: int = 0, hi: int | None = None):
        """The rows with row_idx in [lo, hi) as a lazy Ray Dataset (PAIRS_SCHEMA + row_idx)."""
        kw = dict(self.kwargs, lo=lo, hi=self.rows if hi is None else hi)
        return self.ds.map_batches(number_rows, fn_kwargs=kw, batch_format="pyarrow", batch_size=None)

    def to_table(self):
        """Every row on the driver, in row_idx order (tests and benchmarks only)."""
        import pyarrow as pa

        parts = [b for b in self.numbered().iter_batches(batch_size=None, batch_format="pyarrow") if b.num_rows]
        t = pa.concat_tables(parts) if parts else _table([])
        return t.sort_by("row_idx")


@dataclass
class Prepared:
    run_dir: Path
    source: str
    train_table: object  # Arrow tables on the driver (mixtures, in-process read), else None
    val_table: object
    read: ReadResult  # rows empty on the Ray Data path: only rejects, files and sources
    stats: dict
    train_split: Split | None = None  # the Ray Data path: rows stay in the object store
    val_split: Split | None = None

    def split(self, name: str) -> Split | None:
        """The train or val side as a Split, whichever path made it."""
        s = self.train_split if name == "train" else self.val_split
        if s is not None:
            return s
        table = self.train_table if name == "train" else self.val_table
        if table is None or table.num_rows == 0:
            return None
        import ray.data

        blocks = max(1, min(8, table.num_rows // 512 + 1))
        return Split(ray.data.from_arrow(table).repartition(blocks).materialize(), {"mode": "table"}, table.num_rows)


def number_rows(batch, mode: str, lo: int, hi: int, offsets=(), moved=(), n_val0: int = 0):
    """Ray Data map_batches: the rows of one split side with their row_idx in [lo, hi).

    ``mode`` "table": the rows carry row_idx already. "train"/"val": WORK_SCHEMA rows of
    ``ray_read.read_ds``: row_idx = ``offsets[_task]`` + ``_rank`` (the kept rows of that side
    in earlier tasks, then in this one); ``moved`` (sorted ``_ord``s) are training rows
    ``data.min_val_rows`` moved to validation: they leave the train numbering and follow
    the val rows (``n_val0`` of them) in read order, as ``records.ensure_min_val`` orders them."""
    import numpy as np
    import pyarrow as pa

    if mode == "table":
        idx = batch["row_idx"].to_numpy()
        return batch.filter(pa.array((idx >= lo) & (idx < hi)))
    kept = batch["_kind"].to_numpy() == KEPT
    val = batch["_val"].to_numpy(zero_copy_only=False)
    task, rank, order = batch["_task"].to_numpy(), batch["_rank"].to_numpy(), batch["_ord"].to_numpy()
    moved = np.asarray(moved, np.int64)
    before = np.searchsorted(moved, order)  # moved rows read before this one
    is_moved = np.zeros(len(order), bool) if not len(moved) else moved[np.minimum(before, len(moved) - 1)] == order
    base = np.asarray(offsets, np.int64)[task] + rank if len(offsets) else np.zeros(len(order), np.int64)
    if mode == "train":
        keep = kept & ~val & ~is_moved
        idx = base - before
    else:
        keep = kept & (val | is_moved)
        idx = np.where(is_moved, n_val0 + before, base)
    keep &= (idx >= lo) & (idx < hi)
    out = batch.filter(pa.array(keep)).select(PAIR_COLUMNS)
    return out.append_column("row_idx", pa.array(idx[keep], pa.int64()))


def run_dir_of(cfg: TrainConfig) -> Path:
    """The run directory on the driver (for run.dir=s3://..., its local staging copy)."""
    from .remote import local_run_dir
    return local_run_dir(cfg)


def check_inputs(cfg: TrainConfig) -> str:
    """What must fail before Ray starts, on the driver: every data file exists, the
    format is known, each file has a valid row (read only up to it); the model
    resolves. Returns the model source."""
    from ..models.load import ModelError, resolve_source

    if cfg.data.sources:
        check_mixture(cfg.data.sources)
    else:
        check_pairs(cfg.data.path, cfg.data.format)
    if cfg.data.val_path:
        check_pairs(cfg.data.val_path, cfg.data.format)
    try:
        return resolve_source(cfg.model.name)
    except ModelError as e:
        raise ConfigError(str(e)) from None


def keep_language(res: ReadResult, language: str, path: str) -> int:
    """Keep only ``language`` rows of ``res`` (the others become rejects with the reason);
    returns how many were dropped. DataError when none is left."""
    if not language:
        return 0
    keep = []
    for r in res.rows:
        if r["language"] == language:
            keep.append(r)
        else:
            res.rejects.append({"file": r["file"], "line": r["line"],
                                "reason": language_reject_reason(r["language"], language),
                                "record": {"prompt": r["prompt"], "response": r["response"]}})
    dropped = len(res.rows) - len(keep)
    res.rows = keep
    if not keep:
        raise DataError(f"data.language={language!r}: no rows of that language in {path}")
    return dropped


def prepare(cfg: TrainConfig, read=None, source: str | None = None) -> Prepared:
    """Check, read, validate and split the data; resolve the model.

    Without ``read``: Ray Data (needs a running Ray); with ``data.path`` the rows stay in the
    object store (``prepare_ray``), ``data.sources`` mixtures are sampled on the driver
    (``read_pairs_ray``). ``read=formats.read_pairs`` reads in this process (the plain-loop
    benchmark's baseline, tests without Ray). ``data.language`` applies to ``data.path``
    and ``data.val_path`` alike.
    """
    source = source or check_inputs(cfg)
    if read is None and not cfg.data.sources:
        return prepare_ray(cfg, source)
    read = read or read_pairs_ray
    if cfg.data.sources:  # weighted mixture, each source read like data.path
        res = read_mixture(cfg.data.sources, cfg.run.seed, read)
    else:
        res = read(cfg.data.path, cfg.data.format)
    other_language = keep_language(res, cfg.data.language, cfg.data.path or "data.sources")
    if cfg.data.val_path:
        val_res = read(cfg.data.val_path, cfg.data.format)
        other_language += keep_language(val_res, cfg.data.language, cfg.data.val_path)
        train_rows, val_rows = res.rows, val_res.rows
        res.rejects.extend(val_res.rejects)
    else:
        train_rows, val_rows = [], []
        for r in res.rows:
            h = content_hash(r["system"], r["history"], r["prompt"], r["response"])
            (val_rows if split_of(h, cfg.data.val_fraction, str(cfg.run.seed)) == "val" else train_rows).append(r)
        if cfg.data.val_fraction > 0:  # a small language must not get 0-1 validation rows silently
            train_rows, val_rows, notes = ensure_min_val(train_rows, val_rows, cfg.data.min_val_rows, str(cfg.run.seed))
            for note in notes:
                print(f"[rayft] warning: {note}", file=sys.stderr)
    need = cfg.scaling.num_workers * cfg.train.batch_size
    if len(train_rows) < need:
        raise DataError(f"{len(train_rows)} training rows after the split; need at least "
                        f"scaling.num_workers x train.batch_size = {need}")
    for i, r in enumerate(train_rows):
        r["row_idx"] = i
    for i, r in enumerate(val_rows):
        r["row_idx"] = i
    stats = {"rows_read": res.rows_read + (len(val_rows) if cfg.data.val_path else 0),
             "rows_rejected": len(res.rejects), "rows_other_language": other_language,
             "train_rows": len(train_rows), "val_rows": len(val_rows), "files": res.files,
             "sources": res.sources}
    return Prepared(run_dir_of(cfg), source, _table(train_rows), _table(val_rows), res, stats)


def _min_val_moves(r, cfg: TrainConfig, salt: str) -> tuple[list[int], list[str]]:
    """``records.ensure_min_val`` from counts: the ``_ord`` of every training row it moves
    (per language, the ``want`` rows with the smallest split_u, read order breaking ties:
    per-block candidates, at most min_val_rows per language and block) and its warnings."""
    import pyarrow as pa

    langs = r.per_language()
    moves, want, n_moved = [], {}, dict.fromkeys(langs, 0)
    if cfg.data.min_val_rows > 0:
        for lang, (n_train, have) in langs.items():
            w = min(cfg.data.min_val_rows, (n_train + have) // 2) - have
            if w > 0:
                want[lang] = w
    if want:
        parts = [b for b in r.ds.map_batches(_candidates, fn_kwargs={"langs": sorted(want), "k": max(want.values())},
                                             batch_format="pyarrow", batch_size=None)
                 .iter_batches(batch_size=None, batch_format="pyarrow") if b.num_rows]
        cand = pa.concat_tables(parts).sort_by([("_u", "ascending"), ("_ord", "ascending")]).to_pylist()
        for lang, w in want.items():
            took = [c["_ord"] for c in cand if c["lang"] == lang][:w]
            moves += took
            n_moved[lang] = len(took)
    notes = []
    for lang in sorted(langs):
        n_train, n_val = langs[lang][0] - n_moved[lang], langs[lang][1] + n_moved[lang]
        if n_val < 10:
            notes.append(f"language {lang!r}: {n_val} validation rows of {n_val + n_train} (under 10: its validation "
                         "loss says little; set data.min_val_rows or give data.val_path)")
    return sorted(moves), notes


def _candidates(batch, langs: list[str], k: int):
    """Ray Data map_batches: per language of ``langs``, this block's ``k`` training rows
    nearest the validation side of the split (smallest split_u, then read order)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    lang = pc.if_else(pc.equal(batch["language"], ""), "und", batch["language"])
    m = pc.and_(pc.and_(pc.equal(batch["_kind"], KEPT), pc.invert(batch["_val"])), pc.is_in(lang, pa.array(langs)))
    t = pa.table({"lang": lang, "_u": batch["_u"], "_ord": batch["_ord"]}).filter(m)
    out = [t.filter(pc.equal(t["lang"], g)).sort_by([("_u", "ascending"), ("_ord", "ascending")]).slice(0, k)
           for g in langs]
    return pa.concat_tables(out)


def prepare_ray(cfg: TrainConfig, source: str, formats: dict | None = None) -> Prepared:
    """``prepare`` for ``data.path`` with the rows kept in Ray's object store (see the module doc):
    the driver holds the datasets, per-task counts, the rejects and the few moved rows' ids."""
    import numpy as np

    lang, salt, path = cfg.data.language, str(cfg.run.seed), cfg.data.path
    hashed = not cfg.data.val_path
    tr = read_ds(path, cfg.data.format, language=lang, split="hash" if hashed else "train",
                 val_fraction=cfg.data.val_fraction if hashed else 0.0, salt=salt, formats=formats)
    if lang and tr.count(KEPT) == 0:
        raise DataError(f"data.language={lang!r}: no rows of that language in {path}")
    va = None
    if cfg.data.val_path:
        va = read_ds(cfg.data.val_path, cfg.data.format, language=lang, split="val")
        if lang and va.count(KEPT) == 0:
            raise DataError(f"data.language={lang!r}: no rows of that language in {cfg.data.val_path}")
    moved: list[int] = []
    if hashed and cfg.data.val_fraction > 0:  # a small language must not get 0-1 validation rows silently
        moved, notes = _min_val_moves(tr, cfg, salt)
        for note in notes:
            print(f"[rayft] warning: {note}", file=sys.stderr)

    def offsets(per_task):
        return np.concatenate([[0], np.cumsum(per_task)[:-1]]).astype(np.int64).tolist()

    n_train = tr.count(KEPT, val=False) - len(moved)
    train = Split(tr.ds, {"mode": "train", "offsets": offsets(tr.per_task(False)), "moved": moved}, n_train)
    if va is not None:
        val = Split(va.ds, {"mode": "val", "offsets": offsets(va.per_task(True))}, va.count(KEPT, val=True))
    else:
        n_val0 = tr.count(KEPT, val=True)
        val = Split(tr.ds, {"mode": "val", "offsets": offsets(tr.per_task(True)), "moved": moved, "n_val0": n_val0},
                    n_val0 + len(moved))
    need = cfg.scaling.num_workers * cfg.train.batch_size
    if train.rows < need:
        raise DataError(f"{train.rows} training rows after the split; need at least "
                        f"scaling.num_workers x train.batch_size = {need}")
    res = ReadResult()
    res.files = tr.files()
    res.rejects = tr.rejects() + (va.rejects() if va is not None else [])
    other_language = tr.count(2) + (va.count(2) if va is not None else 0)
    rows_read = int(tr.counts["n"].to_numpy().sum()) + (int(va.counts["n"].to_numpy().sum()) if va else 0)
    stats = {"rows_read": rows_read, "rows_rejected": len(res.rejects), "rows_other_language": other_language,
             "train_rows": train.rows, "val_rows": val.rows, "files": res.files, "sources": []}
    return Prepared(run_dir_of(cfg), source, None, None, res, stats, train, val)


def _table(rows: list[dict]):
    import pyarrow as pa

    t = rows_to_table([{k: v for k, v in r.items() if k != "row_idx"} for r in rows])
    return t.append_column("row_idx", pa.array([r["row_idx"] for r in rows], pa.int64()))


def tokenized_datasets(p: Prepared, cfg: TrainConfig) -> tuple[dict, dict]:
    """Tokenize with Ray Data and split by position, on the driver, before workers start.
    Returns ({name: dataset}, {name: [piece per worker]}) for "train" and "val" (when it has rows).

    Splitting here (not in the trainer) matters twice: worker i always gets the same
    rows, so a resumed run sees the same data per worker (Ray's default streaming_split
    hands blocks to whichever worker asks first); and the tokenize tasks run while the
    CPUs are still free (once the workers hold every CPU, Ray Data tasks would starve).
    Worker i's piece is the rows with row_idx in its own range (train: equal ranges, at
    most num_workers - 1 rows unused, reported; val: ranges differing by at most one
    row), selected and tokenized in Ray Data tasks: the rows never pass through the driver.
    """
    import ray.data

    from ..data.tokenize import tokenize_batch

    ray.data.DataContext.get_current().execution_options.preserve_order = True
    kw = dict(source=p.source, max_seq_len=cfg.data.max_seq_len, system_prompt=cfg.data.system_prompt,
              trust_remote_code=cfg.model.trust_remote_code, train_on=cfg.data.train_on)
    n = cfg.scaling.num_workers
    full, parts = {}, {}
    for name in ("train", "val"):
        split = p.split(name)
        if split is None or split.rows == 0:
            continue
        if name == "train":
            m = split.rows // n
            ranges = [(i * m, (i + 1) * m) for i in range(n)]
        else:
            ranges = [(i * split.rows // n, (i + 1) * split.rows // n) for i in range(n)]
        pieces = [split.numbered(lo, hi).map_batches(tokenize_batch, fn_kwargs=kw, batch_format="pyarrow",
                                                     batch_size=512).materialize() for lo, hi in ranges]
        full[name] = pieces[0].union(*pieces[1:]) if n > 1 else pieces[0]
        parts[name] = pieces
    return full, parts


def pre_split_config(parts: dict):
    """A Ray Train DataConfig that gives worker i piece i of each dataset (``tokenized_datasets``)."""
    from ray.train import DataConfig

    class PreSplit(DataConfig):
        """Worker i gets piece i of each dataset, split on the driver (see tokenized_datasets)."""

        def __init__(self, parts):
            super().__init__()
            self.parts = parts

        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            out = [{} for _ in range(world_size)]
            for name in datasets:
                pieces = self.parts[name]
                if len(pieces) != world_size:
                    raise RuntimeError(f"dataset {name} was split {len(pieces)} ways for {world_size} workers")
                for i, piece in enumerate(pieces):
                    out[i][name] = piece.iterator()
            return out

    return PreSplit(parts)
