"""Exact and near-duplicate detection: vectorised MinHash over character n-grams, LSH
banding, exact Jaccard verification, greedy representatives; optional embedding near-dup.

Pure numpy (no Ray). ``run.py`` computes signatures per block inside Ray Data tasks and
calls ``near_duplicates`` once on the driver over every block plus the ledger's
previously accepted rows, so dedup is global, not per block.

Determinism: documents are processed in a fixed order (previously accepted rows first,
then golden rows, then by (file, line)); a document is removed only when an *earlier
kept* document is a verified duplicate, so every removed row names a kept representative
whose true similarity is above the threshold (no transitive chains).
"""
from __future__ import annotations

import json

import numpy as np

_MIX1 = np.uint64(0xFF51AFD7ED558CCD)


def dedup_text(system: str, history: str, prompt: str, response: str,
               fields: tuple[str, ...] = ("system", "history", "prompt", "response")) -> str:
    """The text near-dup compares: the chosen fields, case-folded, whitespace collapsed."""
    parts = []
    for f in fields:
        v = {"system": system, "history": history, "prompt": prompt, "response": response}[f] or ""
        if f == "history" and v:
            v = "\n".join(m.get("content", "") for m in json.loads(v))
        if v:
            parts.append(v)
    return " ".join("\n".join(parts).casefold().split())


def shingles(text: str, n: int) -> set[str]:
    if len(text) <= n:
        return {text}
    return {text[i:i + n] for i in range(len(text) - n + 1)}


def jaccard(a: str, b: str, n: int) -> float:
    sa, sb = shingles(a, n), shingles(b, n)
    return len(sa & sb) / len(sa | sb)


def shingle_hashes(texts: list[str], n: int, bits: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """32-bit (or 64-bit) hashes of every character n-gram of every text (vectorised), and counts per text.

    Texts shorter than ``n`` contribute one n-gram (the text padded with NULs).
    """
    if not texts:
        return np.zeros(0, np.uint32), np.zeros(0, np.int64)
    padded = [t if len(t) >= n else t + "\x00" * (n - len(t)) for t in texts]
    lens = np.fromiter((len(t) for t in padded), dtype=np.int64, count=len(padded))
    cp = np.frombuffer(("\x00".join(padded) + "\x00" * n).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    m = len(cp) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    for k in range(n):  # polynomial rolling hash over code points, wrapping mod 2**64
        h *= np.uint64(1_000_003)
        h += cp[k:k + m]
    cnt = lens - n + 1
    starts = np.concatenate(([0], np.cumsum(lens + 1)[:-1]))
    first = np.cumsum(cnt) - cnt
    idx = np.repeat(starts - first, cnt) + np.arange(int(cnt.sum()))
    h = h[idx]
    h ^= h >> np.uint64(33)  # murmur3 finaliser: spread every input bit into the top bits
    h *= _MIX1
    h ^= h >> np.uint64(33)
    return (h if bits == 64 else (h >> np.uint64(32)).astype(np.uint32)), cnt


def shingle_sets(texts: list[str], n: int) -> list[np.ndarray]:
    """Sorted unique 64-bit n-gram hashes per text: exact Jaccard by ``np.intersect1d``
    (a 64-bit collision is ~1e-10 likely per pair of texts)."""
    h, cnt = shingle_hashes(texts, n, bits=64)
    return [np.unique(part) for part in np.split(h, np.cumsum(cnt)[:-1])]


def perm_params(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    a = (g.integers(1, 2**32, num_perm, dtype=np.uint64) | np.uint64(1)).astype(np.uint32)
    b = g.integers(0, 2**32, num_perm, dtype=np.uint64).astype(np.uint32)
    return a, b


def minhash(texts: list[str], n: int = 5, num_perm: int = 120, seed: int = 1,
            chunk: int = 8192) -> np.ndarray:
    """(len(texts), num_perm) uint32 MinHash signatures.

    Permutation k maps a shingle hash x to ``a_k * x + b_k mod 2**32`` (odd a_k: a
    bijection); the layout is (perm, shingle) so the per-text minimum is one
    ``np.minimum.reduceat`` over contiguous memory. ~7 us per 200-character text.
    """
    h, cnt = shingle_hashes(texts, n)
    sig = np.empty((num_perm, len(texts)), dtype=np.uint32)
    if not texts:
        return sig.T
    a, b = perm_params(num_perm, seed)
    ends = np.cumsum(cnt)
    starts = ends - cnt
    buf = np.empty((num_perm, chunk + int(cnt.max())), dtype=np.uint32)
    i = 0
    while i < len(texts):
        j = max(int(np.searchsorted(ends, starts[i] + chunk, side="right")), i + 1)
        lo, hi = starts[i], ends[j - 1]
        x = buf[:, :hi - lo]
        np.multiply(a[:, None], h[None, lo:hi], out=x)
        np.add(x, b[:, None], out=x)
        sig[:, i:j] = np.minimum.reduceat(x, starts[i:j] - lo, axis=1)
        i = j
    return np.ascontiguousarray(sig.T)


def lsh_candidates(sig: np.ndarray, bands: int, rows: int, max_bucket: int = 200) -> np.ndarray:
    """Pairs (i, j), i < j, that share at least one LSH band: shape (k, 2), unique.

    Buckets larger than ``max_bucket`` pair each member only with the bucket's first
    ``max_bucket`` members (in index order), which bounds the work on boilerplate text.
    """
    n = sig.shape[0]
    if n < 2:
        return np.zeros((0, 2), np.int64)
    keys = []
    for bnd in range(bands):
        cols = sig[:, bnd * rows:(bnd + 1) * rows].astype(np.uint64)
        key = np.zeros(n, dtype=np.uint64)
        for c in range(cols.shape[1]):
            key *= np.uint64(0x9E3779B97F4A7C15)
            key += cols[:, c]
        order = np.lexsort((np.arange(n), key))  # by band key, then index
        sk = key[order]
        brk = np.flatnonzero(sk[1:] != sk[:-1]) + 1
        starts = np.concatenate(([0], brk))
        lens = np.diff(np.concatenate((starts, [n])))
        multi = lens > 1
        if not multi.any():
            continue
        # positions inside multi-member runs, with their offset in the run and the run length
        run_len = np.repeat(lens[multi], lens[multi])
        pos = np.concatenate([np.arange(s, s + ln) for s, ln in zip(starts[multi], lens[multi])]) \
            if multi.sum() < 64 else _run_positions(starts[multi], lens[multi])
        off = pos - np.repeat(starts[multi], lens[multi])
        for d in range(1, int(run_len.max())):
            ok = (off + d < run_len) & (off < max_bucket)
            if not ok.any():
                break
            a = order[pos[ok]]
            b = order[pos[ok] + d]
            keys.append(a.astype(np.int64) * n + b)
    if not keys:
        return np.zeros((0, 2), np.int64)
    k = np.concatenate(keys)
    k.sort()
    k = k[np.concatenate(([True], k[1:] != k[:-1]))]
    return np.stack([k // n, k % n], axis=1)


def _run_positions(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + len)`` for every run, vectorised."""
    total = int(lens.sum())
    first = np.cumsum(lens) - lens
    return np.repeat(starts - first, lens) + np.arange(total)


def greedy_representatives(pairs: np.ndarray, n: int, protected: int = 0) -> np.ndarray:
    """rep[j] = the smallest earlier *kept* i paired with j, else -1 (pairs are verified
    duplicates with i < j). Indexes below ``protected`` are always kept."""
    rep = np.full(n, -1, dtype=np.int64)
    if len(pairs) == 0:
        return rep
    order = np.lexsort((pairs[:, 0], pairs[:, 1]))
    for i, j in pairs[order].tolist():
        if j < protected or rep[j] >= 0 or rep[i] >= 0:
            continue
        rep[j] = i
    return rep


def near_duplicates(sig: np.ndarray, texts, threshold: float = 0.8, ngram: int = 5, bands: int = 20,
                    rows: int = 6, n_prior: int = 0, max_bucket: int = 200,
                    margin: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """For documents in processing order, (rep, sim): rep[j] is the kept document j
    duplicates (Jaccard of character n-grams >= threshold, verified exactly), else -1.

    ``texts`` is a sequence or a callable index -> dedup text (only candidates are
    materialised). The first ``n_prior`` documents are previously accepted rows.
    """
    n = sig.shape[0]
    get = texts if callable(texts) else texts.__getitem__
    cand = lsh_candidates(sig, bands, rows, max_bucket)
    cand = cand[cand[:, 1] >= n_prior]
    verified, sims = [], []
    if len(cand):
        est = np.empty(len(cand))
        for s in range(0, len(cand), 65536):  # signature agreement estimates J cheaply
            c = cand[s:s + 65536]
            est[s:s + 65536] = (sig[c[:, 0]] == sig[c[:, 1]]).mean(axis=1)
        cand = cand[est >= threshold - margin]
        docs = np.unique(cand)
        sets = dict(zip(docs.tolist(), shingle_sets([get(i) for i in docs.tolist()], ngram)))
        for i, j in cand.tolist():
            a, b = sets[i], sets[j]
            small, large = (len(a), len(b)) if len(a) <= len(b) else (len(b), len(a))
            if small < threshold * large:  # Jaccard <= |small| / |large|
                continue
            inter = len(np.intersect1d(a, b, assume_unique=True))
            jac = inter / (len(a) + len(b) - inter)
            if jac >= threshold:
                verified.append((i, j))
                sims.append(jac)
    pairs = np.array(verified, dtype=np.int64).reshape(-1, 2)
    rep = greedy_representatives(pairs, n, n_prior)
    sim = np.zeros(n)
    if len(pairs):
        lookup = {(i, j): s for (i, j), s in zip(verified, sims)}
        for j in np.flatnonzero(rep >= 0).tolist():
            sim[j] = lookup[(int(rep[j]), j)]
    return rep, sim


def embedding_duplicates(emb: np.ndarray, threshold: float = 0.95, n_prior: int = 0,
                         block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Like ``near_duplicates`` with cosine similarity of L2-normalised embeddings
    (blocked brute force: O(n^2 d); fine for ~10^5 rows on a few cores)."""
    n = emb.shape[0]
    emb = emb.astype(np.float32, copy=False)
    found, sims = [], []
    for s in range(max(n_prior, 0), n, block):
        e = min(s + block, n)
        sim = emb[s:e] @ emb[:e].T
        jj, ii = np.nonzero(sim >= threshold)
        jj = jj + s
        keep = ii < jj
        found.append(np.stack([ii[keep], jj[keep]], axis=1))
        sims.append(sim[jj[keep] - s, ii[keep]])
    pairs = np.concatenate(found) if found else np.zeros((0, 2), np.int64)
    simv = np.concatenate(sims) if sims else np.zeros(0)
    rep = greedy_representatives(pairs.astype(np.int64), n, n_prior)
    out = np.zeros(n)
    if len(pairs):
        lookup = {(int(i), int(j)): float(v) for (i, j), v in zip(pairs.tolist(), simv.tolist())}
        for j in np.flatnonzero(rep >= 0).tolist():
            out[j] = lookup[(int(rep[j]), j)]
    return rep, out


def exact_duplicates(hashes: list[str], prior: dict[str, object] | None = None) -> list[object]:
    """For each hash in processing order: None if first seen, else what it duplicates
    (the earlier index, or ``prior[hash]`` for a previously accepted row)."""
    seen: dict[str, int] = {}
    out: list[object] = []
    prior = prior or {}
    for k, h in enumerate(hashes):
        if h in prior:
            out.append(prior[h])
        elif h in seen:
            out.append(seen[h])
        else:
            seen[h] = k
            out.append(None)
    return out
