"""HDBSCAN on reduced embeddings at million scale, in bounded memory.

HDBSCAN is (1) a k-nearest-neighbour search that gives each point a core distance,
(2) a minimum spanning tree over mutual-reachability distances, and (3) a condensed
cluster tree cut into clusters. Steps 1-2 are the expensive, memory-hungry part;
step 3 is linear in n. fast_hdbscan's own path for d > 30 already builds the MST from
an (approximate) kNN graph. The sharded path (``sharded_hdbscan``) does the same, but
never runs a neighbour search on more than ``shard_size`` points at once:

1. Partition space, not rows (partition.py): k-means regions, split until every home
   set is <= shard_size / (1 + halo_frac). A region keeps local density (and so the
   meaning of min_cluster_size) intact; random row shards would dilute a 25-frame
   character to 25 / n_shards frames per shard.
2. Halo: each shard also takes "guest" copies of other partitions' points within h of
   its Voronoi faces (~halo_frac of all points get one). A home point x whose k-th
   neighbour is within h_j + (x's distance to its nearest face) provably has its exact
   neighbours in the shard; the others are counted (``knn_beyond_halo``).
3. Per shard: kNN of home and guest points among home + guests (faiss: exact up to
   ``brute_max`` points, HNSW above). Home rows are kept (n x k int32 +
   float32); guest rows contribute their edges to home points: real cross-partition
   edges (without them neighbouring partitions would only meet through +inf bridges).
3b. Cross-shard join (refine.py): the rows step 2 could not certify take candidates from
   their neighbours' lists, a few NN-descent rounds on the driver (``refine_rounds``).
   Without it, at 4M points, seams through big characters' dense middles turned whole
   characters into noise (benchmarks/RESULTS.md).
4. Core distance = distance to the min_samples-th other neighbour (fast_hdbscan's
   convention). Per shard, the minimum spanning forest of its mutual-reachability edges;
   by the cycle property the MST of the whole edge set lies inside the union of these
   forests, so one more MST over that union (~n(1 + halo) edges) gives it exactly.
5. Well-separated characters leave the kNN graph in several components; graph.py joins
   them with real mutual-reachability edges found by Boruvka rounds over representative
   points (+inf bridges only for what is still apart), then the condensed tree and
   cluster selection run once over the n - 1 edge tree (hdbscan's compiled routines).

Memory: n*k*8 bytes of neighbour arrays (160 MB at 1M x k=20) + one shard's neighbour
search + O(n) edges and tree; measured in benchmarks/RESULTS.md.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Callable, Iterator

import numpy as np

from .graph import bridge_components, connect_components, relabel_by_size, spanning_forest, tree_labels
from .partition import build_partitions, halo_guests
from .refine import refine_knn

Log = Callable[[str], None]


def _mem() -> str:
    """This process's resident and peak memory (Linux), for the phase log lines."""
    try:
        f = dict(ln.split(":", 1) for ln in open("/proc/self/status") if ln.startswith(("VmRSS", "VmHWM")))
        return f" | rss {int(f['VmRSS'].split()[0]) / 1e6:.2f} GB, peak {int(f['VmHWM'].split()[0]) / 1e6:.2f} GB"
    except (OSError, KeyError, ValueError):
        return ""


def hdbscan_labels(z: np.ndarray, min_cluster_size: int, min_samples: int = 0,
                   selection: str = "leaf") -> np.ndarray:
    """One fast_hdbscan call. Returns int64 labels (-1 noise)."""
    import fast_hdbscan

    n = len(z)
    ms = min_samples or min_cluster_size
    if n <= max(min_cluster_size, ms):
        return np.full(n, -1, dtype=np.int64)
    model = fast_hdbscan.HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min(ms, n - 1),
                                 cluster_selection_method=selection)
    return np.asarray(model.fit_predict(np.ascontiguousarray(z, dtype=np.float32)), dtype=np.int64)


#: faiss's exact-search block (queries, database points): ~20 % faster than faiss's default
#: 4096 x 1024 for 12k-20k-point 32-d shards (benchmarks/faiss_blocks_bench.py, RESULTS.md)
BLAS_BLOCKS = (256, 2048)


def knn_shard(x: np.ndarray, k: int, brute_max: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest other points for every row of ``x``: (idx int32 (m, k), dist float32 (m, k)).

    faiss (compiled BLAS kernels, no JIT): exact search (``IndexFlatL2``) up to ``brute_max``
    points, an HNSW graph above, built single-threaded so a rerun gives the same neighbours.
    pynndescent, used before, numba-compiles for ~1 min in every new process (each Ray task
    worker), longer than the exact search of a 100k-point shard in 32 dims takes."""
    import faiss

    m = len(x)
    kk = min(k, m - 1)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if m <= brute_max:
        index = faiss.IndexFlatL2(x.shape[1])
        index.add(x)
        cv = faiss.cvar
        saved = cv.distance_compute_blas_query_bs, cv.distance_compute_blas_database_bs
        # smaller distance blocks than faiss's 4096 x 1024 (16 MB) stay in cache while the
        # top-k heaps scan them: ~20 % faster for 12k-25k-point shards (benchmarks/RESULTS.md)
        cv.distance_compute_blas_query_bs, cv.distance_compute_blas_database_bs = BLAS_BLOCKS
        try:
            d, i = index.search(x, kk + 1)
        finally:
            cv.distance_compute_blas_query_bs, cv.distance_compute_blas_database_bs = saved
    else:
        index = faiss.IndexHNSWFlat(x.shape[1], 32)
        index.hnsw.efConstruction = 80
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # parallel insertion order would vary between runs
        try:
            index.add(x)
        finally:
            faiss.omp_set_num_threads(threads)
        index.hnsw.efSearch = max(64, 4 * (kk + 1))
        d, i = index.search(x, kk + 1)
    d = np.where(i >= 0, np.sqrt(np.maximum(d, 0)), np.inf)  # squared L2; -1 = none found
    # drop self (duplicates can push it off column 0): stable sort puts self last
    is_self = i == np.arange(m)[:, None]
    order = np.argsort(is_self, axis=1, kind="stable")[:, :kk]
    i, d = np.take_along_axis(i, order, 1), np.take_along_axis(d, order, 1)
    if kk < k:  # tiny shard: pad with "no neighbour"
        i = np.concatenate([i, np.full((m, k - kk), -1)], 1)
        d = np.concatenate([d, np.full((m, k - kk), np.inf)], 1)
    return i.astype(np.int32), d.astype(np.float32)


def shard_knn(z: np.ndarray, hi: np.ndarray, guests: np.ndarray, k: int,
              brute_max: int) -> tuple[np.ndarray, np.ndarray, tuple, float]:
    """One shard's neighbour search: kNN of its home points and guests among home + guests.
    Returns (home rows' neighbour ids in ``z`` (int32, -1 = none), their distances, the guests'
    edges to home points as (guest ids, home ids, distances), seconds)."""
    t = time.time()
    idx = np.concatenate([hi, guests])
    li, ld = knn_shard(z[idx], k, brute_max)
    # Guests' neighbours among this shard's home points are real cross-partition edges:
    # without them partitions whose home kNN stay inside are joined only by +inf
    # bridges, and every partition then becomes a "cluster" at lambda 0.
    gl, gd = li[len(hi):], ld[len(hi):]
    r, q = np.nonzero((gl >= 0) & (gl < len(hi)))
    cross = (guests[r], hi[gl[r, q]], gd[r, q])
    li, ld = li[: len(hi)], ld[: len(hi)]
    gi = np.where(li >= 0, idx[np.maximum(li, 0)], -1).astype(np.int32)
    return gi, ld, cross, round(time.time() - t, 2)


ShardRunner = Callable[..., Iterator[tuple[int, np.ndarray, np.ndarray, tuple, float]]]


def local_shards(z, homes, guests, k, brute_max):
    """Every shard's neighbour search in this process, one at a time (memory: one shard)."""
    for j in range(len(homes)):
        yield (j, *shard_knn(z, homes[j], guests[j], k, brute_max))


def _shard_task(z, hi, guests, k, brute_max, threads):
    import faiss  # OpenMP would start one thread per core of the node, whatever the task holds

    faiss.omp_set_num_threads(max(1, threads))
    import resource

    out = shard_knn(z, hi, guests, k, brute_max)
    return (*out, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9)  # this worker's peak


def _warm_task() -> None:
    import faiss  # noqa: F401 - the import is the warm-up


class RayShards:
    """Per-shard neighbour searches as Ray tasks, ``max_in_flight`` at once (0 = as many as the
    cluster's CPUs fit at ``cpus`` each), on any node of the cluster. The reduced points go to
    the object store once (each task reads them zero-copy and copies only its shard); results
    are merged on the driver as they finish, so the driver holds at most ``max_in_flight``
    shard results beside the n x k neighbour arrays. A task lost with its node is retried by
    Ray (``max_retries``) on another node: the search is deterministic, so a retry gives the
    same neighbours."""

    def __init__(self, cpus: float = 1.0, max_in_flight: int = 0, max_retries: int = 3,
                 shutdown_when_done: bool = False):
        """``shutdown_when_done``: the caller started Ray for these searches only: once the last
        result is in, Ray shuts down on a background thread while the driver's join and merge
        run (~1.5 s off the wall time); ``close()`` waits for it (or shuts down itself)."""
        self.cpus, self.max_in_flight, self.max_retries = cpus, max_in_flight, max_retries
        self.shutdown_when_done = shutdown_when_done
        self.ran, self.in_flight = 0, 0
        self.peak_rss_gb = 0.0  # highest peak RSS of a worker process that ran a search
        self._closer = None

    def describe(self) -> str:
        return f"ray tasks ({self.ran} shards, {self.cpus:g} CPU each, {self.in_flight} at once)"

    def _slots(self) -> int:
        import ray

        cpus_total = ray.cluster_resources().get("CPU", 1.0)
        return self.max_in_flight or max(1, int(cpus_total // self.cpus))

    def warm(self) -> None:
        """Start the task workers and their faiss import now (one no-op task per slot, not
        waited for), e.g. while the caller's PCA runs: ~2 s less before the first search."""
        import ray

        task = ray.remote(num_cpus=self.cpus, max_retries=0)(_warm_task)
        for _ in range(self._slots()):
            task.remote()  # Ray runs a task whether or not its result is kept

    def __call__(self, z, homes, guests, k, brute_max):
        import ray

        self.in_flight = self._slots()
        task = ray.remote(num_cpus=self.cpus, max_retries=self.max_retries)(_shard_task)
        z_ref = ray.put(z)
        pending: dict = {}
        # largest shards first (exact search grows with size squared): the last tasks to finish
        # are small ones, so the cores do not idle long at the end; results land by shard id
        queue = sorted(range(len(homes)), key=lambda j: -(len(homes[j]) + len(guests[j])))
        q = 0
        while q < len(queue) or pending:
            while q < len(queue) and len(pending) < self.in_flight:
                j = queue[q]
                pending[task.remote(z_ref, homes[j], guests[j], k, brute_max, max(1, int(self.cpus)))] = j
                q += 1
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                self.ran += 1
                *out, rss = ray.get(ref)
                self.peak_rss_gb = max(self.peak_rss_gb, round(rss, 3))
                yield (pending.pop(ref), *out)
        del z_ref
        if self.shutdown_when_done:
            import threading

            self._closer = threading.Thread(target=ray.shutdown, name="rayft-ray-shutdown")
            self._closer.start()

    def close(self) -> None:
        """Ray shut down (when this runner owns it), waiting for a background shutdown."""
        if self._closer is not None:
            self._closer.join()
        elif self.shutdown_when_done:
            import ray

            ray.shutdown()


def _forests(shards: range, scratch: np.ndarray, homes, cross, nn_idx, nn_dist, core, k: int) -> list[np.ndarray]:
    """Step 2 for some shards: each shard's minimum spanning forest of mutual-reachability
    edges (its home rows' neighbour lists + its guests' edges to home points)."""
    out = []
    for j in shards:
        hi = homes[j]
        gs, gh, gd = cross[j]
        src = np.concatenate([np.repeat(hi, k), gs])
        dst = np.concatenate([nn_idx[hi].ravel().astype(np.int64), gh])
        d = np.concatenate([nn_dist[hi].ravel(), gd]).astype(np.float64)
        valid = dst >= 0
        src, dst, d = src[valid], dst[valid], d[valid]
        w = np.maximum(np.maximum(core[src], core[dst]), d)
        out.append(spanning_forest(src, dst, w, scratch))  # Kruskal: i->j and j->i need no dedupe
        cross[j] = None
    return out


def sharded_hdbscan(z: np.ndarray, min_cluster_size: int, min_samples: int = 0, selection: str = "leaf",
                    shard_size: int = 16_000, halo_frac: float = 0.2, knn_k: int = 0, seed: int = 0,
                    brute_max: int = 200_000, log: Log | None = None,
                    tasks: "ShardRunner | None" = None, refine_rounds: int = 3) -> tuple[np.ndarray, dict]:
    """Bounded-memory HDBSCAN (see module docstring). Returns (labels, info).

    ``tasks``: how the per-shard neighbour searches run; None = one after another in this
    process (``local_shards``), ``RayShards(...)`` = as Ray tasks. Same labels either way."""
    log = log or (lambda s: None)
    n = len(z)
    ms = min_samples or min_cluster_size
    k = max(knn_k or 2 * ms, ms, 15)
    z = np.ascontiguousarray(z, dtype=np.float32)
    t0 = time.time()
    target = max(4 * k, int(shard_size / (1 + halo_frac)))
    c, home = build_partitions(z, target, seed)
    guests, h, near_face, h_eff = halo_guests(z, c, home, halo_frac, shard_size)
    log(f"sharded: {n} points -> {len(c)} shards (home <= {target}, halo h={h:.3f}, "
        f"{sum(len(g) for g in guests)} guest copies) in {time.time() - t0:.1f}s{_mem()}")
    nn_idx = np.full((n, k), -1, dtype=np.int32)
    nn_dist = np.full((n, k), np.inf, dtype=np.float32)
    shards, cross = [None] * len(c), [None] * len(c)
    homes = [np.flatnonzero(home == j) for j in range(len(c))]
    run = tasks or local_shards
    for j, gi, ld, xs, sec in run(z, homes, guests, k, brute_max):  # 1) neighbour search per shard
        hi = homes[j]
        nn_idx[hi] = gi
        nn_dist[hi] = ld
        cross[j] = xs
        shards[j] = {"home": int(len(hi)), "guests": int(len(guests[j])), "knn_seconds": sec}
        log(f"  shard {j + 1}/{len(c)}: kNN of {len(hi)} home among {len(hi) + len(guests[j])} points ({sec:.1f}s)")
    log(f"  kNN done{_mem()}")
    # A point y outside shard j is > h_j from j's side of its face, and a home point x of j
    # is >= its nearest-face distance f_x from the other side, so |x - y| > h_j + f_x: the
    # k neighbours of x are exact (up to kNN approximation) when its k-th is within that.
    uncertain = nn_dist[:, -1] > h_eff[home] + near_face
    beyond = int(uncertain.sum())
    t = time.time()
    refined = refine_knn(  # neighbours' neighbours reach across the faces (refine.py)
        z, home, nn_idx, nn_dist, uncertain, rounds=refine_rounds,
        core_col=ms - 1, min_core_changed=0.005,
        log=lambda r, c: log(f"  cross-shard join round {r + 1}: {c['rows']} of {beyond} uncertain rows got "
                             f"nearer neighbours, {c['core']} a smaller core distance ({c['core_2pct']} by > 2 %) ({c['seconds']}s){_mem()}"))
    if refined:
        log(f"  cross-shard join: {len(refined)} rounds in {time.time() - t:.1f}s")
    del uncertain
    core = nn_dist[:, ms - 1].astype(np.float64)
    t = time.time()
    # shards split among threads (numpy and the Kruskal kernel run outside the GIL), each with
    # its own union-find scratch; the union is concatenated in shard order either way
    nt = max(1, min(len(os.sched_getaffinity(0)), 4, len(c)))
    scratches = [np.full(n, -1, dtype=np.int64) for _ in range(nt)]
    with ThreadPoolExecutor(nt) as pool:
        job = partial(_forests, homes=homes, cross=cross, nn_idx=nn_idx, nn_dist=nn_dist, core=core, k=k)
        parts = list(pool.map(job, [range(i, len(c), nt) for i in range(nt)], scratches))
    forests = [None] * len(c)
    for i, part in enumerate(parts):
        forests[i::nt] = part
    scratch = scratches[0]
    del scratches[1:], parts
    del nn_idx, nn_dist
    union = np.concatenate(forests)
    mst = spanning_forest(union[:, 0], union[:, 1], union[:, 2], scratch)
    n_comp = n - len(mst)
    extra = connect_components(z, core, mst, seed=seed) if n_comp > 1 else np.zeros((0, 3))
    if len(extra):
        both = np.concatenate([mst, extra])
        mst = spanning_forest(both[:, 0], both[:, 1], both[:, 2], scratch)
    n_real = len(mst)
    mst = bridge_components(mst, n)
    log(f"  spanning tree: {len(union)} forest edges -> {n_comp} components, joined by {len(extra)} "
        f"candidate edges; {n - 1 - n_real} +inf bridges left ({time.time() - t:.1f}s){_mem()}")
    t = time.time()
    labels = relabel_by_size(tree_labels(mst, min_cluster_size, selection), min_cluster_size)
    log(f"  condensed tree + {selection} selection: {labels.max() + 1} clusters ({time.time() - t:.1f}s){_mem()}")
    info = {"method": "sharded", "shards": len(c), "halo": round(h, 4), "halo_frac": halo_frac, "knn_k": k,
            "guest_copies": int(sum(len(g) for g in guests)), "knn_beyond_halo": beyond,
            "refine_rounds": refine_rounds, "refined_rows": refined,
            "knn_components": n_comp, "inf_bridges": n - 1 - n_real,
            "max_call_points": max(s["home"] + s["guests"] for s in shards), "shard_stats": shards,
            "knn_executor": getattr(tasks, "describe", lambda: "in-process")(),
            "knn_task_peak_rss_gb": getattr(tasks, "peak_rss_gb", None),
            "seconds": round(time.time() - t0, 2)}
    return labels, info


def cluster(z: np.ndarray, min_cluster_size: int, min_samples: int = 0, selection: str = "leaf",
            method: str = "sharded", shard_size: int = 16_000, halo_frac: float = 0.2, knn_k: int = 0,
            seed: int = 0, log: Log | None = None, tasks: ShardRunner | None = None,
            refine_rounds: int = 3) -> tuple[np.ndarray, dict]:
    """``sharded`` (rayft's path; one exact shard for small sets) or ``flat`` (one fast_hdbscan
    call, the reference); labels numbered largest cluster first, -1 = noise."""
    if method == "flat":
        t = time.time()
        labels = relabel_by_size(hdbscan_labels(z, min_cluster_size, min_samples, selection), min_cluster_size)
        return labels, {"method": "flat", "max_call_points": len(z), "seconds": round(time.time() - t, 2)}
    return sharded_hdbscan(z, min_cluster_size, min_samples, selection, shard_size, halo_frac, knn_k,
                           seed, log=log, tasks=tasks, refine_rounds=refine_rounds)


def cluster_medoids(z: np.ndarray, labels: np.ndarray) -> dict[int, int]:
    """Per cluster, the index of the member nearest the cluster mean (a cheap medoid)."""
    ok = np.flatnonzero(labels >= 0)
    if len(ok) == 0:
        return {}
    lab = labels[ok]
    k = int(lab.max()) + 1
    cnt = np.bincount(lab, minlength=k).astype(np.float64)
    mean = np.stack([np.bincount(lab, weights=z[ok, d], minlength=k) for d in range(z.shape[1])], 1)
    mean /= np.maximum(cnt, 1)[:, None]
    dist = ((z[ok] - mean[lab]) ** 2).sum(1)
    order = np.lexsort((dist, lab))
    first = np.unique(lab[order], return_index=True)[1]
    return {int(lab[order[i]]): int(ok[order[i]]) for i in first}
