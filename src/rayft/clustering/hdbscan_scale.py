"""HDBSCAN on reduced embeddings: one flat call for small sets, a sharded path for millions.

HDBSCAN is (1) a k-nearest-neighbour search that gives each point a core distance,
(2) a minimum spanning tree over mutual-reachability distances, and (3) a condensed
cluster tree cut into clusters. Steps 1-2 are the expensive, memory-hungry part;
step 3 is linear in n. fast_hdbscan's own path for d > 30 already builds the MST from
an (approximate) kNN graph. The sharded path (``sharded_hdbscan``) does the same, but
never runs the neighbour search or the MST on more than ``shard_size`` points at once:

1. Partition space, not rows: k-means centroids on a sample; each point goes to its
   nearest centroid ("home"); crowded partitions are split again until every home set
   is <= shard_size / (1 + halo_frac). A partition is a region, so local density (and
   so the meaning of min_cluster_size) is unchanged; random row shards would dilute a
   25-frame character to 25 / n_shards frames per shard.
2. Halo: a partition also takes the points of other partitions within distance h of
   its Voronoi faces ("guests"). Any point outside that set is > h away from every home
   point, so a home point whose k-th neighbour is within h has its exact neighbours in
   the shard. h is set so ~halo_frac of points get a guest copy; points whose k-th
   neighbour lies beyond h are counted (``knn_beyond_halo``) - they are the sparsest,
   i.e. noise candidates, whose core distance can only be overestimated.
3. Per shard: kNN of home points among home + guests (exact brute force up to
   ``brute_max`` points, pynndescent above), kept as n x k int32/float32 arrays.
4. Core distance = distance to the min_samples-th neighbour. Per shard, the minimum
   spanning forest of its home points' mutual-reachability kNN edges; by the cycle
   property the global MST of the kNN graph lies inside the union of these forests,
   so one more MST over that union (<= ~n(1 + halo) edges) gives it exactly.
5. Components bridged with +inf edges (as fast_hdbscan does), then fast_hdbscan's
   condensed tree and cluster selection run once over the n - 1 edge tree.

Memory: n*k*8 bytes of neighbour arrays + one shard's neighbour search + O(n) edges
and tree (measured in benchmarks/RESULTS.md). Results match a flat fast_hdbscan run
on the same kNN graph definition up to kNN approximation.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

Log = Callable[[str], None]


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


def _nearest(z: np.ndarray, c: np.ndarray, chunk: int = 262_144) -> np.ndarray:
    out = np.empty(len(z), dtype=np.int64)
    cn = (c * c).sum(1)
    for s in range(0, len(z), chunk):
        x = z[s:s + chunk]
        out[s:s + chunk] = np.argmin(cn[None, :] - 2.0 * x @ c.T, axis=1)
    return out


def _kmeans(z: np.ndarray, k: int, seed: int, sample: int = 100_000) -> np.ndarray:
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(seed)
    x = z if len(z) <= sample else z[rng.choice(len(z), sample, replace=False)]
    k = max(1, min(k, len(x)))
    return KMeans(n_clusters=k, n_init=2, random_state=seed).fit(x).cluster_centers_.astype(np.float32)


def build_partitions(z: np.ndarray, target: int, seed: int = 0, max_rounds: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Centroids and home partition per point, every home set <= target points."""
    c = _kmeans(z, math.ceil(len(z) / target), seed)
    home = _nearest(z, c)
    for r in range(max_rounds):
        counts = np.bincount(home, minlength=len(c))
        over = np.flatnonzero(counts > target)
        if len(over) == 0:
            break
        keep = [c[j:j + 1] for j in range(len(c)) if j not in set(over.tolist())]
        for j in over:  # split crowded regions with their own k-means
            keep.append(_kmeans(z[home == j], math.ceil(counts[j] / target) + 1, seed + r + 1))
        c = np.concatenate(keep)
        home = _nearest(z, c)
    counts = np.bincount(home, minlength=len(c))
    if counts.max() > target:  # k-means could not split it (duplicates): cut it by rows
        c, home = _force_split(z, c, home, target)
    nonempty = np.flatnonzero(np.bincount(home, minlength=len(c)))
    remap = np.full(len(c), -1)
    remap[nonempty] = np.arange(len(nonempty))
    return c[nonempty], remap[home]


def _force_split(z, c, home, target):
    home = home.copy()
    extra = []
    for j in np.flatnonzero(np.bincount(home, minlength=len(c)) > target):
        idx = np.flatnonzero(home == j)
        for part in np.array_split(idx, math.ceil(len(idx) / target))[1:]:
            home[part] = len(c) + len(extra)
            extra.append(z[part].mean(0, keepdims=True))
    return np.concatenate([c, *extra]) if extra else c, home


def face_distances(z: np.ndarray, c: np.ndarray, home: np.ndarray) -> np.ndarray:
    """(n, k) distance from each point to the Voronoi face between its home and each
    partition (inf for the home itself): (|x-c_j|^2 - |x-c_h|^2) / (2 |c_j - c_h|)."""
    cn = (c * c).sum(1)
    d2 = cn[None, :] - 2.0 * z @ c.T + (z * z).sum(1, keepdims=True)
    cc = np.sqrt(np.maximum(((c[:, None, :] - c[None, :, :]) ** 2).sum(-1), 1e-12))
    rows = np.arange(len(z))
    f = (d2 - d2[rows, home][:, None]) / (2.0 * cc[home])
    f[rows, home] = np.inf
    return f


def halo_guests(z: np.ndarray, c: np.ndarray, home: np.ndarray, halo_frac: float, cap: int,
                chunk: int = 131_072) -> tuple[list[np.ndarray], float, np.ndarray, np.ndarray]:
    """Per partition: indices of guest points (nearest face first, capped so home + guests
    <= cap); the halo width h (the halo_frac quantile of distance to the nearest face);
    each point's distance to its nearest face; each partition's effective halo width
    (h, or less where the cap cut its guest list short)."""
    k = len(c)
    if k == 1 or halo_frac <= 0:
        return ([np.zeros(0, dtype=np.int64) for _ in range(k)], 0.0,
                np.full(len(z), np.inf if k == 1 else 0.0), np.zeros(k))
    nearest_face = np.concatenate([face_distances(z[s:s + chunk], c, home[s:s + chunk]).min(1)
                                   for s in range(0, len(z), chunk)])
    h = float(np.quantile(nearest_face, min(halo_frac, 1.0)))
    pts, parts, dist = [], [], []
    for s in range(0, len(z), chunk):
        f = face_distances(z[s:s + chunk], c, home[s:s + chunk])
        i, j = np.nonzero(f <= h)
        pts.append(i + s)
        parts.append(j)
        dist.append(f[i, j])
    pts, parts, dist = np.concatenate(pts), np.concatenate(parts), np.concatenate(dist)
    room = cap - np.bincount(home, minlength=k)
    guests, h_eff = [], np.full(k, h)
    for j in range(k):
        m = parts == j
        order = np.argsort(dist[m], kind="stable")
        if len(order) > max(0, int(room[j])):  # capped: the halo is only as wide as its last guest
            order = order[: max(0, int(room[j]))]
            h_eff[j] = float(dist[m][order[-1]]) if len(order) else 0.0
        guests.append(np.sort(pts[m][order]))
    return guests, h, nearest_face, h_eff


def relabel_by_size(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Clusters smaller than min_size -> -1; the rest renumbered 0.. largest first."""
    out = np.full(len(labels), -1, dtype=np.int64)
    ok = labels >= 0
    if not ok.any():
        return out
    ids, inv, cnt = np.unique(labels[ok], return_inverse=True, return_counts=True)
    order = np.lexsort((ids, -cnt))  # size desc, then id for determinism
    rank = np.full(len(ids), -1)
    big = order[cnt[order] >= min_size]
    rank[big] = np.arange(len(big))
    out[ok] = rank[inv]
    return out



def knn_shard(x: np.ndarray, k: int, brute_max: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest other points for every row of ``x``: (idx int32 (m, k), dist float32 (m, k))."""
    m = len(x)
    kk = min(k, m - 1)
    if m <= brute_max:
        from sklearn.neighbors import NearestNeighbors

        d, i = NearestNeighbors(n_neighbors=kk + 1, algorithm="brute").fit(x).kneighbors(x)
    else:
        from pynndescent import NNDescent

        i, d = NNDescent(x, n_neighbors=kk + 1, random_state=seed, low_memory=True).neighbor_graph
    # drop self (duplicates can push it off column 0): stable sort puts self last
    is_self = i == np.arange(m)[:, None]
    order = np.argsort(is_self, axis=1, kind="stable")[:, :kk]
    i, d = np.take_along_axis(i, order, 1), np.take_along_axis(d, order, 1)
    if kk < k:  # tiny shard: pad with "no neighbour"
        i = np.concatenate([i, np.full((m, k - kk), -1)], 1)
        d = np.concatenate([d, np.full((m, k - kk), np.inf)], 1)
    return i.astype(np.int32), d.astype(np.float32)


def spanning_forest(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Minimum spanning forest of an edge list (global ids) -> (e, 3) float64 [src, dst, w]."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree

    ok = (src >= 0) & (dst >= 0) & (src != dst) & np.isfinite(w)
    src, dst, w = src[ok], dst[ok], w[ok]
    if len(src) == 0:
        return np.zeros((0, 3))
    nodes, inv = np.unique(np.concatenate([src, dst]), return_inverse=True)
    a, b = inv[: len(src)], inv[len(src):]
    g = coo_matrix((np.maximum(w.astype(np.float64), 1e-12), (a, b)), shape=(len(nodes), len(nodes))).tocsr()
    t = minimum_spanning_tree(g).tocoo()  # callers dedupe first: coo->csr sums duplicate edges
    return np.stack([nodes[t.row], nodes[t.col], t.data], 1)


def _dedupe_min(src, dst, w):
    """Undirected edges, one per pair, keeping the smallest weight (coo->csr would sum duplicates)."""
    a, b = np.minimum(src, dst).astype(np.int64), np.maximum(src, dst).astype(np.int64)
    order = np.lexsort((w, b, a))
    a, b, w = a[order], b[order], w[order]
    first = np.ones(len(a), dtype=bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return a[first], b[first], w[first]


def bridge_components(edges: np.ndarray, n: int) -> np.ndarray:
    """Complete a spanning forest to n - 1 edges with +inf bridges between components."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(edges)), (edges[:, 0].astype(np.int64), edges[:, 1].astype(np.int64))), shape=(n, n))
    ncomp, comp = connected_components(g, directed=False)
    if ncomp <= 1:
        return edges
    reps = np.sort(np.unique(comp, return_index=True)[1])
    bridges = np.stack([reps[:-1], reps[1:], np.full(len(reps) - 1, np.inf)], 1).astype(np.float64)
    return np.concatenate([edges, bridges])


def tree_labels(mst: np.ndarray, min_cluster_size: int, selection: str) -> np.ndarray:
    """fast_hdbscan's condensed tree + cluster selection over a complete spanning tree."""
    from fast_hdbscan.hdbscan import clusters_from_spanning_tree

    labels = clusters_from_spanning_tree(mst, min_cluster_size=min_cluster_size,
                                         cluster_selection_method=selection)[0]
    return np.asarray(labels, dtype=np.int64)


def sharded_hdbscan(z: np.ndarray, min_cluster_size: int, min_samples: int = 0, selection: str = "leaf",
                    shard_size: int = 100_000, halo_frac: float = 0.2, knn_k: int = 0, seed: int = 0,
                    brute_max: int = 20_000, log: Log | None = None) -> tuple[np.ndarray, dict]:
    """Bounded-memory HDBSCAN (see module docstring). Returns (labels, info)."""
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
        f"{sum(len(g) for g in guests)} guest copies) in {time.time() - t0:.1f}s")
    nn_idx = np.full((n, k), -1, dtype=np.int32)
    nn_dist = np.full((n, k), np.inf, dtype=np.float32)
    shards = []
    for j in range(len(c)):  # 1) neighbour search, one shard at a time
        t = time.time()
        hi = np.flatnonzero(home == j)
        idx = np.concatenate([hi, guests[j]])
        li, ld = knn_shard(z[idx], k, brute_max, seed)
        li, ld = li[: len(hi)], ld[: len(hi)]
        nn_idx[hi] = np.where(li >= 0, idx[np.maximum(li, 0)], -1)
        nn_dist[hi] = ld
        shards.append({"home": int(len(hi)), "guests": int(len(guests[j])), "knn_seconds": round(time.time() - t, 2)})
        log(f"  shard {j + 1}/{len(c)}: kNN of {len(hi)} home among {len(idx)} points ({time.time() - t:.1f}s)")
    core = nn_dist[:, ms - 1].astype(np.float64)
    # A point y outside shard j is > h_j from j's side of its face, and a home point x of j
    # is >= its nearest-face distance f_x from the other side, so |x - y| > h_j + f_x: the
    # k neighbours of x are exact (up to kNN approximation) when its k-th is within that.
    beyond = int((nn_dist[:, -1] > h_eff[home] + near_face).sum())
    t = time.time()
    forests = []
    for j in range(len(c)):  # 2) per-shard spanning forest of mutual-reachability kNN edges
        hi = np.flatnonzero(home == j)
        src = np.repeat(hi, k)
        dst = nn_idx[hi].ravel().astype(np.int64)
        d = nn_dist[hi].ravel().astype(np.float64)
        valid = dst >= 0
        src, dst, d = src[valid], dst[valid], d[valid]
        w = np.maximum(np.maximum(core[src], core[dst]), d)
        forests.append(spanning_forest(*_dedupe_min(src, dst, w)))
    del nn_idx, nn_dist
    union = np.concatenate(forests)
    mst = spanning_forest(*_dedupe_min(union[:, 0].astype(np.int64), union[:, 1].astype(np.int64), union[:, 2]))
    mst = bridge_components(mst, n)
    log(f"  spanning tree: {len(union)} forest edges -> {len(mst)} ({time.time() - t:.1f}s)")
    t = time.time()
    labels = relabel_by_size(tree_labels(mst, min_cluster_size, selection), min_cluster_size)
    log(f"  condensed tree + {selection} selection: {labels.max() + 1} clusters ({time.time() - t:.1f}s)")
    info = {"method": "sharded", "shards": len(c), "halo": round(h, 4), "halo_frac": halo_frac, "knn_k": k,
            "guest_copies": int(sum(len(g) for g in guests)), "knn_beyond_halo": beyond,
            "max_call_points": max(s["home"] + s["guests"] for s in shards), "shard_stats": shards,
            "seconds": round(time.time() - t0, 2)}
    return labels, info


def cluster(z: np.ndarray, min_cluster_size: int, min_samples: int = 0, selection: str = "leaf",
            method: str = "auto", flat_max_points: int = 150_000, shard_size: int = 100_000,
            halo_frac: float = 0.2, knn_k: int = 0, seed: int = 0, log: Log | None = None) -> tuple[np.ndarray, dict]:
    """Flat (one fast_hdbscan call) or sharded per ``method``; labels numbered largest first."""
    if method == "flat" or (method == "auto" and len(z) <= flat_max_points):
        t = time.time()
        labels = relabel_by_size(hdbscan_labels(z, min_cluster_size, min_samples, selection), min_cluster_size)
        return labels, {"method": "flat", "max_call_points": len(z), "seconds": round(time.time() - t, 2)}
    return sharded_hdbscan(z, min_cluster_size, min_samples, selection, shard_size, halo_frac, knn_k,
                           seed, log=log)


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
