"""`rayft frames cluster`: embeddings Parquet -> streaming PCA -> HDBSCAN -> labels + clusters.json.

The PCA and the final tree run in this process; the sharded path's per-shard neighbour
searches run as Ray tasks on every node when this process is on a Ray cluster
(``cluster.ray_tasks``), else one after another here (numba uses every core); memory is bounded
by streaming the 512-d embeddings twice (never held at full width) and by the sharded
HDBSCAN path. Output (``cluster.output``): labels.parquet (path, episode, label; -1 =
noise), clusters.json, _SUCCESS. A rerun with the same input files and settings is a no-op.
"""
from __future__ import annotations

import hashlib
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ...config import ConfigError, to_dict
from ...storage import atomic_write_json, is_done, mark_done
from .hdbscan_scale import cluster, cluster_medoids
from .reduce import ScatterAccumulator, embeddings_from_arrow, fit_pca, l2_normalize


#: where the work runs, not what it computes: changing them does not redo a finished clustering
EXECUTION_KEYS = ("ray_tasks", "task_cpus", "max_tasks", "read_batch")


def _shard_runner(c, n: int):
    """RayShards when the per-shard searches should be Ray tasks (see ClusterSection.ray_tasks),
    with whether this call started Ray; (None, False) for in-process."""
    import os

    if c.method != "sharded" or c.ray_tasks == "off" or n <= c.shard_size:
        return None, False
    import ray

    from ... import _env
    from .hdbscan_scale import RayShards

    if c.ray_tasks == "auto" and not (ray.is_initialized() or os.environ.get("RAY_ADDRESS")):
        return None, False
    started = _env.ray_start()
    return RayShards(cpus=c.task_cpus, max_in_flight=c.max_tasks, shutdown_when_done=started), started


def _log(msg: str) -> None:
    print(f"frames cluster: {msg}", file=sys.stderr, flush=True)


def parquet_files(root: str | Path) -> list[Path]:
    """Every *.parquet under ``root`` (hidden and _-prefixed names skipped), sorted."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise ConfigError(f"cluster.input: not a directory: {root}")
    files = sorted(p for p in root.rglob("*.parquet")
                   if not any(part.startswith((".", "_")) for part in p.relative_to(root).parts))
    if not files:
        raise ConfigError(f"cluster.input: no Parquet files under {root}")
    return files


def iter_embeddings(files: list[Path], batch: int, meta: bool = False):
    """Yield (unit-normalised float32 embeddings, path array, episode array) per read batch."""
    for f in files:
        pa.default_memory_pool().release_unused()  # Arrow's allocator keeps freed batches otherwise
        pf = pq.ParquetFile(f)
        names = set(pf.schema_arrow.names)
        missing = {"path", "embedding"} - names
        if missing:
            raise ConfigError(f"{f}: missing column(s) {sorted(missing)}; need path, episode, embedding")
        cols = ["embedding"] + (["path"] + (["episode"] if "episode" in names else []) if meta else [])
        for rb in pf.iter_batches(batch_size=batch, columns=cols):
            x = l2_normalize(embeddings_from_arrow(rb.column("embedding")))
            if not meta:
                yield x, None, None
                continue
            ep = rb.column("episode") if "episode" in names else pa.array([""] * rb.num_rows)
            yield x, rb.column("path").cast(pa.string()), ep.cast(pa.string())


def _signature(files: list[Path], cfg) -> str:
    settings = {k: v for k, v in to_dict(cfg.cluster).items() if k not in EXECUTION_KEYS}
    h = hashlib.sha1(json.dumps(settings, sort_keys=True).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _reduce(files: list[Path], c) -> tuple[np.ndarray, object, list, list]:
    """Streaming PCA: pass 1 accumulates mean + scatter (O(d^2)), pass 2 projects each batch.
    Returns (reduced float32 (n, pca_dims), the PCA model, path and episode arrays per batch)."""
    acc = ScatterAccumulator()
    for x, _, _ in iter_embeddings(files, c.read_batch):
        acc.add(x)
    if acc.n < 2:
        raise ConfigError(f"cluster.input: {acc.n} embeddings; need at least 2")
    pca = fit_pca(acc, c.pca_dims, c.whiten)
    z = np.empty((acc.n, pca.components.shape[0]), dtype=np.float32)
    paths, eps, i = [], [], 0
    for x, p, e in iter_embeddings(files, c.read_batch, meta=True):
        z[i:i + len(x)] = pca.transform(x)
        i += len(x)
        paths.append(p)
        eps.append(e)
    pa.default_memory_pool().release_unused()  # ~1 GB at 1M x 512-d, kept by the pool until now
    return z, pca, paths, eps


def run_cluster(cfg) -> str:
    """`rayft frames cluster`: returns the output directory."""
    c = cfg.cluster
    if not c.input or not c.output:
        raise ConfigError("frames cluster needs cluster.input and cluster.output (or input=DIR output=DIR)")
    out = Path(c.output)
    files = parquet_files(c.input)
    sig = _signature(files, cfg)
    if is_done(out) and json.loads((out / "_SUCCESS").read_text()).get("signature") == sig:
        _log(f"{out} is up to date with {c.input}; nothing to do")
        return str(out)
    t0 = time.time()
    tasks, started = None, False
    try:
        try:
            rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        except Exception:  # noqa: BLE001 - the PCA pass below reports a broken file properly
            rows = 0
        if rows:
            # Ray first (its start forks helper processes: not safe beside running threads),
            # then its task workers start and import faiss while the PCA runs here
            tasks, started = _shard_runner(c, rows)
            if tasks is not None:
                tasks.warm()
            if started:
                _log(f"started a local Ray for the neighbour searches in {time.time() - t0:.1f}s")
        t1 = time.time()
        z, pca, paths, eps = _reduce(files, c)
        t_reduce = time.time() - t1
        n = len(z)
        _log(f"{n} embeddings from {len(files)} files, PCA {pca.summary()} in {t_reduce:.1f}s")
        labels, info = cluster(z, c.min_cluster_size, c.min_samples, c.selection, c.method, c.shard_size,
                               c.halo_frac, c.knn_k, c.seed, log=_log, tasks=tasks,
                               refine_rounds=c.refine_rounds)
    finally:
        if tasks is not None:
            tasks.close()  # shuts down the Ray this call started (already under way after the kNN)
    path_arr = pa.chunked_array(paths, type=pa.string()).combine_chunks()
    ep_arr = pa.chunked_array(eps, type=pa.string()).combine_chunks()
    clusters = summarize(z, labels, path_arr, ep_arr)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"path": path_arr, "episode": ep_arr, "label": pa.array(labels, pa.int64())}),
                   out / ".labels.parquet.tmp")
    (out / ".labels.parquet.tmp").replace(out / "labels.parquet")
    seconds = time.time() - t0
    if len(info.get("shard_stats", [])) > 200:  # keep clusters.json readable at huge shard counts
        info.pop("shard_stats")
    atomic_write_json(out / "clusters.json", {
        "input": str(Path(c.input).resolve()), "points": n, "clusters": len(clusters),
        "noise": int((labels < 0).sum()), "min_cluster_size": c.min_cluster_size,
        "pca": pca.summary(), "hdbscan": info, "seconds": round(seconds, 2),
        "reduce_seconds": round(t_reduce, 2), "peak_rss_gb": round(peak_rss_gb(), 3),
        "config": to_dict(c), "cluster_list": clusters})
    mark_done(out, info={"signature": sig, "points": n, "clusters": len(clusters)})
    _log(f"{len(clusters)} clusters, {int((labels < 0).sum())} noise of {n} in {seconds:.1f}s -> {out}")
    return str(out)


def summarize(z: np.ndarray, labels: np.ndarray, paths: pa.Array, episodes: pa.Array, top: int = 20) -> list[dict]:
    """Per cluster: size, episodes spanned (count + the most frequent), medoid frame."""
    med = cluster_medoids(z, labels)
    enc = episodes.dictionary_encode()
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    names = enc.dictionary.to_pylist()
    ok = labels >= 0
    k = int(labels.max()) + 1 if ok.any() else 0
    pair, cnt = np.unique(labels[ok] * (len(names) + 1) + codes[ok], return_counts=True)
    per: dict[int, list[tuple[int, str]]] = {i: [] for i in range(k)}
    for pc, n in zip(pair.tolist(), cnt.tolist()):
        per[pc // (len(names) + 1)].append((n, names[pc % (len(names) + 1)]))
    sizes = np.bincount(labels[ok], minlength=k)
    out = []
    for i in range(k):
        eps = sorted(per[i], key=lambda t: (-t[0], t[1]))
        out.append({"id": i, "size": int(sizes[i]), "episodes": len(eps),
                    "top_episodes": {e: n for n, e in eps[:top]},
                    "medoid": paths[med[i]].as_py() if i in med else None})
    return out
