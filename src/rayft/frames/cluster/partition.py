"""Spatial partitions for the sharded HDBSCAN path: k-means regions and their halos.

A partition is a region of space (the Voronoi cell of a k-means centroid), not a slice of
rows, so local density - and with it the meaning of min_cluster_size - is the same inside
a shard as in the whole set. Each shard also takes "guest" copies of points just across
its faces, so home points near a border still see their true neighbours.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import sparse


def _nearest(z: np.ndarray, c: np.ndarray, chunk: int = 262_144) -> np.ndarray:
    out = np.empty(len(z), dtype=np.int64)
    cn = (c * c).sum(1)
    for s in range(0, len(z), chunk):
        x = z[s:s + chunk]
        out[s:s + chunk] = np.argmin(cn[None, :] - 2.0 * x @ c.T, axis=1)
    return out


def _kmeans(z: np.ndarray, k: int, seed: int, sample: int = 100_000, iters: int = 15) -> np.ndarray:
    """Centroids by k-means++ seeding + Lloyd steps on a sample, in plain numpy: only shard
    regions are needed, not a polished k-means, and this avoids sklearn's OpenMP start-up
    (10+ s on a loaded 2-core machine for a 6,000-point fit)."""
    rng = np.random.default_rng(seed)
    x = z if len(z) <= sample else z[rng.choice(len(z), sample, replace=False)]
    x = np.ascontiguousarray(x, dtype=np.float32)
    k = max(1, min(k, len(x)))
    c = np.empty((k, x.shape[1]), dtype=np.float32)
    c[0] = x[rng.integers(len(x))]
    d2 = ((x - c[0]) ** 2).sum(1)
    for i in range(1, k):  # k-means++: far-apart seeds, so regions follow the data
        p = d2 / d2.sum() if d2.sum() > 0 else None
        c[i] = x[rng.choice(len(x), p=p)]
        d2 = np.minimum(d2, ((x - c[i]) ** 2).sum(1))
    x64 = x.astype(np.float64)  # centroid sums in float64, converted once, not per iteration
    for _ in range(iters):
        a = _nearest(x, c)
        cnt = np.bincount(a, minlength=k)
        # centroid sums as a sparse one-hot product (scipy): np.add.at's unbuffered scatter
        # took 35 of the 39 s of partitioning 1M points
        onehot = sparse.csr_matrix((np.ones(len(a)), (a, np.arange(len(a)))), shape=(k, len(a)))
        new = np.asarray(onehot @ x64)
        empty = cnt == 0
        new[~empty] /= cnt[~empty, None]
        new[empty] = c[empty]  # an empty region keeps its seed
        new = new.astype(np.float32)
        if np.allclose(new, c):
            break
        c = new
    return c


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
