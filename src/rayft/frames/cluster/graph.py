"""Graph steps of HDBSCAN on a kNN graph: spanning forests, joining components with real
edges, and the condensed tree / cluster selection (hdbscan's compiled routines; fast_hdbscan's for large trees)."""
from __future__ import annotations

import numpy as np


def _kruskal_kernel():
    import numba

    @numba.njit(cache=True, nogil=True)
    def kruskal(src, dst, w, parent):  # pragma: no cover - compiled
        """Kruskal over an edge list: union-find with path halving and union by size
        (``parent``: scratch, -1 = a root of size 1, -size for bigger roots; all -1 on entry
        and again on return, so one array of n serves every call). Stable sort: equal weights
        keep input order, so the forest is deterministic."""
        order = np.argsort(w, kind="mergesort")
        keep = np.zeros(len(w), dtype=np.bool_)
        for e in order:
            a, b = src[e], dst[e]
            if a < 0 or b < 0 or a == b or not np.isfinite(w[e]):
                continue
            while parent[a] >= 0:
                p = parent[a]
                if parent[p] >= 0:
                    parent[a] = parent[p]
                a = p
            while parent[b] >= 0:
                p = parent[b]
                if parent[p] >= 0:
                    parent[b] = parent[p]
                b = p
            if a == b:
                continue
            if parent[a] > parent[b]:  # sizes are negative: make a the bigger tree
                a, b = b, a
            parent[a] += parent[b]
            parent[b] = a
            keep[e] = True
        for e in range(len(src)):
            if src[e] >= 0:
                parent[src[e]] = -1
            if dst[e] >= 0:
                parent[dst[e]] = -1
        return keep

    return kruskal


_KRUSKAL = None


def spanning_forest(src: np.ndarray, dst: np.ndarray, w: np.ndarray, scratch: np.ndarray | None = None) -> np.ndarray:
    """Minimum spanning forest of an edge list (global ids) -> (e, 3) float64 [src, dst, w].

    Kruskal in numba (no dedupe needed: a repeated pair is only a cycle); negative ids,
    self-loops and non-finite weights are skipped. ``scratch``: an int64 array of -1, at
    least max id + 1 long, reused across calls (left all -1); None = allocated here. It
    replaced scipy's csgraph MST, whose unique + CSR building dominated the 1M merge."""
    global _KRUSKAL
    src = np.ascontiguousarray(src, dtype=np.int64)
    dst = np.ascontiguousarray(dst, dtype=np.int64)
    w = np.ascontiguousarray(w, dtype=np.float64)
    if len(src) == 0:
        return np.zeros((0, 3))
    if scratch is None:
        scratch = np.full(int(max(src.max(), dst.max())) + 1, -1, dtype=np.int64)
    if _KRUSKAL is None:
        _KRUSKAL = _kruskal_kernel()
    keep = _KRUSKAL(src, dst, w, scratch)
    return np.stack([src[keep], dst[keep], w[keep]], 1).astype(np.float64)


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
