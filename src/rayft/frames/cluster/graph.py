"""Graph steps of HDBSCAN on a kNN graph: spanning forests, joining components with real
edges, and the condensed tree / cluster selection (hdbscan's compiled routines; fast_hdbscan's for large trees)."""
from __future__ import annotations

import numpy as np


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


def dedupe_min(src, dst, w):
    """Undirected edges, one per pair, keeping the smallest weight (coo->csr would sum duplicates)."""
    a, b = np.minimum(src, dst).astype(np.int64), np.maximum(src, dst).astype(np.int64)
    if len(a) == 0:
        return a, b, w
    key = a * (int(b.max()) + 1) + b  # one int64 sort key per pair (n^2 < 2^63 up to 3e9 points)
    by_w = np.argsort(w, kind="stable")
    first = by_w[np.unique(key[by_w], return_index=True)[1]]  # unique's index: first = lightest
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


#: From this many points on, tree_labels uses fast_hdbscan's numba routines: at 1M points the
#: Cython condense/select takes ~95 s, fast_hdbscan's ~3 s (+ its JIT: ~70 s once per machine,
#: ~4 s from numba's on-disk cache after that). Below it the Cython path needs no compile.
FAST_TREE_FROM = 500_000


def tree_labels(mst: np.ndarray, min_cluster_size: int, selection: str, fast_from: int | None = None) -> np.ndarray:
    """Single-linkage tree, condensed tree and leaf/eom selection over a complete spanning
    tree. Small trees: the classic hdbscan library's compiled (Cython) routines, no numba JIT
    (fast_hdbscan's first call in a fresh process without a warm numba cache compiles for
    ~1 min), so small jobs and tests start at once. From ``fast_from`` points on: fast_hdbscan's
    array-based routines (same algorithm, same labels, ~30x faster at 1M points). +inf bridge
    edges give lambda 0 either way."""
    fast_from = FAST_TREE_FROM if fast_from is None else fast_from
    mst = np.asarray(mst, dtype=np.float64)
    mst = mst[np.lexsort((mst[:, 1], mst[:, 0], mst[:, 2]))]  # by weight, ties broken deterministically
    try:  # hdbscan's internal (but long-stable) functions; fall back to fast_hdbscan's
        from hdbscan._hdbscan_linkage import label
        from hdbscan.hdbscan_ import _tree_to_labels
    except ImportError:
        fast_from = 0
    if len(mst) + 1 >= fast_from:
        from fast_hdbscan.hdbscan import clusters_from_spanning_tree

        out = clusters_from_spanning_tree(mst, min_cluster_size=min_cluster_size, cluster_selection_method=selection)
        return np.asarray(out[0], dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        labels = _tree_to_labels(None, label(mst), min_cluster_size, selection)[0]
    return np.asarray(labels, dtype=np.int64)


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


def _components(edges: np.ndarray, n: int) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(edges)), (edges[:, 0].astype(np.int64), edges[:, 1].astype(np.int64))),
                   shape=(n, n))
    return connected_components(g, directed=False)[1]


def representatives(comp: np.ndarray, core: np.ndarray, per: int, seed: int = 0) -> np.ndarray:
    """Up to ``per`` point ids per component: half with the largest core distance (bridges
    between components run through their sparse rims), half random."""
    rng = np.random.default_rng(seed)
    n = len(comp)
    ncomp = int(comp.max()) + 1
    order = np.lexsort((-core, comp))
    starts = np.searchsorted(comp[order], np.arange(ncomp))
    rank = np.arange(n) - starts[comp[order]]
    top = order[rank < (per + 1) // 2]
    rest = order[rank >= (per + 1) // 2]
    rest = rest[np.lexsort((rng.random(len(rest)), comp[rest]))]
    rc = comp[rest]
    rrank = np.arange(len(rest)) - np.searchsorted(rc, rc)
    return np.sort(np.concatenate([top, rest[rrank < per // 2]]))


def connect_components(z: np.ndarray, core: np.ndarray, edges: np.ndarray, max_reps: int = 12_000,
                       rounds: int = 16, seed: int = 0, chunk: int = 2048) -> np.ndarray:
    """Real mutual-reachability edges that join the components of a kNN spanning forest.

    A kNN graph of well-separated characters falls apart into one component per character
    (every point's k neighbours are inside its own). Bridging those with +inf edges makes
    each component a cluster at lambda 0 together with all the noise hanging on it. Here,
    Boruvka rounds over up to ``max_reps`` representatives find, for each representative,
    its nearest (in mutual reachability) representative in another component, until one
    component is left: finite bridge weights that are upper bounds of the exact ones.
    Returns (m, 3) float64 edges [src, dst, weight].
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(z)
    comp = _components(edges, n)
    ncomp = int(comp.max()) + 1
    if ncomp <= 1:
        return np.zeros((0, 3))
    if ncomp > max_reps:  # pathological: keep the largest components, the rest get +inf bridges
        big = np.argsort(-np.bincount(comp))[:max_reps]
        keep = np.isin(comp, big)
        ids = np.flatnonzero(keep)
        remap = np.full(ncomp, -1)
        remap[big] = np.arange(len(big))
        reps = ids[representatives(remap[comp[ids]], core[ids], 1, seed)]
    else:
        reps = representatives(comp, core, max(1, max_reps // ncomp), seed)
    zr = np.ascontiguousarray(z[reps], dtype=np.float32)
    kr = core[reps].astype(np.float32)
    cr = comp[reps]
    sq = (zr * zr).sum(1)
    label = np.arange(ncomp)  # merged component of each original component
    found = []
    for _ in range(rounds):
        lab = label[cr]
        if (lab == lab[0]).all():
            break
        best_j = np.empty(len(reps), dtype=np.int64)
        best_w = np.empty(len(reps), dtype=np.float32)
        for s in range(0, len(reps), chunk):
            d = np.sqrt(np.maximum(sq[s:s + chunk, None] + sq[None, :] - 2.0 * zr[s:s + chunk] @ zr.T, 0))
            w = np.maximum(np.maximum(d, kr[s:s + chunk, None]), kr[None, :])
            w[lab[s:s + chunk, None] == lab[None, :]] = np.inf
            best_j[s:s + chunk] = np.argmin(w, axis=1)
            best_w[s:s + chunk] = w[np.arange(len(w)), best_j[s:s + chunk]]
        ok = np.isfinite(best_w)
        if not ok.any():
            break
        found.append(np.stack([reps[ok], reps[best_j[ok]], best_w[ok].astype(np.float64)], 1))
        a, b = cr[ok], cr[best_j[ok]]
        g = coo_matrix((np.ones(len(a)), (label[a], label[b])), shape=(ncomp, ncomp))
        merged = connected_components(g, directed=False)[1]
        label = merged[label]
    return np.concatenate(found) if found else np.zeros((0, 3))
