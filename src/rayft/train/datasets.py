"""The data phase of `rayft train`: check the inputs, read and split the rows, tokenize them
into per-worker Ray datasets.

``check_inputs`` runs on the driver before Ray starts (bad files, unknown format, no valid
row, unknown model: one clear message). ``prepare`` reads with Ray Data (bad rows ->
rejects), keeps ``data.language`` rows of the training and the validation data, and splits
by content hash. ``tokenized_datasets`` tokenizes with Ray Data and cuts one piece per
worker; ``PreSplit`` hands worker i its piece. `rayft sweep` calls the same three.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError
from ..data.formats import DataError, ReadResult, check_pairs
from ..data.mixture import check_mixture, read_mixture
from ..data.ray_read import read_pairs_ray
from ..data.records import content_hash, ensure_min_val, rows_to_table, split_of
from .config import TrainConfig


@dataclass
class Prepared:
    run_dir: Path
    source: str
    train_table: object
    val_table: object
    read: ReadResult
    stats: dict


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
                                "reason": f"language {r['language']!r} != data.language {language!r}",
                                "record": {"prompt": r["prompt"], "response": r["response"]}})
    dropped = len(res.rows) - len(keep)
    res.rows = keep
    if not keep:
        raise DataError(f"data.language={language!r}: no rows of that language in {path}")
    return dropped


def prepare(cfg: TrainConfig, read=None, source: str | None = None) -> Prepared:
    """Check, read, validate and split the data; resolve the model.

    ``read`` defaults to ``read_pairs_ray`` (Ray Data tasks; needs a running Ray);
    ``formats.read_pairs`` reads in this process (the plain-loop benchmark's baseline).
    ``data.language`` applies to ``data.path`` and ``data.val_path`` alike.
    """
    source = source or check_inputs(cfg)
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
    Train splits are equal-sized: at most num_workers - 1 rows unused, reported.
    """
    import ray.data

    from ..data.tokenize import tokenize_batch

    ray.data.DataContext.get_current().execution_options.preserve_order = True
    kw = dict(source=p.source, max_seq_len=cfg.data.max_seq_len, system_prompt=cfg.data.system_prompt,
              trust_remote_code=cfg.model.trust_remote_code, train_on=cfg.data.train_on)
    n = cfg.scaling.num_workers
    full, parts = {}, {}
    for name, table in (("train", p.train_table), ("val", p.val_table)):
        if table.num_rows == 0:
            continue
        blocks = max(1, min(2 * n, table.num_rows // 512 + 1))
        ds = ray.data.from_arrow(table).repartition(blocks).map_batches(
            tokenize_batch, fn_kwargs=kw, batch_format="pyarrow", batch_size=512).materialize()
        full[name] = ds
        parts[name] = ds.split(n, equal=(name == "train"))
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
