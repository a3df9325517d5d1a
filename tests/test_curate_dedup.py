"""Exact + MinHash near-dup + embedding near-dup (pure numpy, no Ray)."""
from __future__ import annotations

import random
from itertools import combinations

import numpy as np

from rayft.curate import dedup as dd
from rayft.testing.pairs import PairGenerator, edit


def test_minhash_estimates_jaccard_for_en_and_zh():
    g, r = PairGenerator(5), random.Random(5)
    errs = []
    for lang in ("en", "zh"):
        for _ in range(150):
            a = g.text(lang, 1, 3)
            b = edit(r, a, lang, r.randint(1, 8))
            sig = dd.minhash([a.casefold(), b.casefold()], 5, 128, 1)
            errs.append((sig[0] == sig[1]).mean() - dd.jaccard(a.casefold(), b.casefold(), 5))
    errs = np.array(errs)
    assert abs(errs.mean()) < 0.01 and errs.std() < 0.05  # theory: sqrt(J(1-J)/128) <= 0.044


def test_minhash_is_deterministic_and_handles_short_text():
    texts = ["same text here", "same text here", "ab", "", "你好"]
    s1, s2 = dd.minhash(texts, 5, 60, 3), dd.minhash(list(reversed(texts)), 5, 60, 3)
    assert (s1[0] == s1[1]).all() and (s1 == s2[::-1]).all()
    assert s1.shape == (5, 60) and s1.dtype == np.uint32
    assert dd.minhash([], 5, 60, 3).shape == (0, 60)


def test_lsh_candidates_match_brute_force_banding():
    rng = np.random.default_rng(0)
    sig = rng.integers(0, 3, (400, 12), dtype=np.uint32)  # many collisions, buckets of all sizes
    got = {tuple(p) for p in dd.lsh_candidates(sig, 4, 3, max_bucket=10**6).tolist()}
    want = set()
    for b in range(4):
        buckets: dict = {}
        for i in range(400):
            buckets.setdefault(tuple(sig[i, b * 3:(b + 1) * 3]), []).append(i)
        for members in buckets.values():
            want |= set(combinations(members, 2))
    assert got == want
    capped = dd.lsh_candidates(sig, 4, 3, max_bucket=5)
    assert len(capped) < len(got) and (capped[:, 0] < capped[:, 1]).all()


def test_greedy_representatives_keep_earliest_and_never_chain():
    # 0~1, 1~2 but not 0~2: 1 goes (dup of 0), 2 stays (its only partner was removed)
    rep = dd.greedy_representatives(np.array([[1, 2], [0, 1]]), 3)
    assert rep.tolist() == [-1, 0, -1]
    # 3 is a dup of 0 and of 2: the smallest kept index represents it
    rep = dd.greedy_representatives(np.array([[2, 3], [0, 3]]), 4)
    assert rep.tolist() == [-1, -1, -1, 0]
    # protected (previously accepted) rows are never removed
    rep = dd.greedy_representatives(np.array([[0, 1], [1, 2]]), 3, protected=2)
    assert rep.tolist() == [-1, -1, 1]


def test_near_duplicates_recall_and_precision_on_edited_copies():
    g, r = PairGenerator(11), random.Random(11)
    originals = [g.text(r.choice(["en", "zh"]), 2, 4) for _ in range(300)]
    copies = [(k, edit(r, originals[k], "zh" if any("\u4e00" <= c <= "\u9fff" for c in originals[k]) else "en",
                       r.randint(1, 12))) for k in r.sample(range(300), 150)]
    texts = [t.casefold() for t in originals] + [c.casefold() for _, c in copies]
    sig = dd.minhash(texts, 5, 120, 1)
    rep, sim = dd.near_duplicates(sig, texts, threshold=0.8, ngram=5, bands=20, rows=6)
    assert (rep[:300] == -1).all()  # originals come first and are distinct
    for n, (k, _) in enumerate(copies):
        j = dd.jaccard(texts[k], texts[300 + n], 5)
        if j >= 0.8:
            assert rep[300 + n] == k and abs(sim[300 + n] - j) < 1e-9
        else:
            assert rep[300 + n] == -1


def test_near_duplicates_against_prior_rows():
    prior = ["the quick brown fox jumps over the lazy dog near the river bank"]
    new = ["the quick brown fox jumps over the lazy dog near the river bank!", "something entirely different here"]
    texts = prior + new
    rep, _ = dd.near_duplicates(dd.minhash(texts, 5, 120, 1), texts, 0.8, 5, 20, 6, n_prior=1)
    assert rep.tolist() == [-1, 0, -1]
    rep, _ = dd.near_duplicates(dd.minhash(texts, 5, 120, 1), lambda i: texts[i], 0.8, 5, 20, 6, n_prior=1)
    assert rep.tolist() == [-1, 0, -1]


def test_exact_duplicates_with_prior():
    dup = dd.exact_duplicates(["a", "b", "a", "c", "b"], {"c": "previously accepted f:3"})
    assert dup == [None, None, 0, "previously accepted f:3", 1]


def test_shingle_sets_give_exact_jaccard():
    texts = ["hello world foo", "hello world fob", "你好世界你好", "ab"]
    sets = dd.shingle_sets(texts, 3)
    for a, b in combinations(range(4), 2):
        inter = len(np.intersect1d(sets[a], sets[b]))
        assert abs(inter / (len(sets[a]) + len(sets[b]) - inter) - dd.jaccard(texts[a], texts[b], 3)) < 1e-12


def test_embedding_duplicates():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(50, 16)).astype(np.float32)
    emb = np.concatenate([base, base[:10] + 0.01 * rng.normal(size=(10, 16)).astype(np.float32)])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    rep, sim = dd.embedding_duplicates(emb, threshold=0.95, block=7)
    assert rep[:50].tolist() == [-1] * 50 and rep[50:].tolist() == list(range(10))
    assert (sim[50:] >= 0.95).all()
    rep, _ = dd.embedding_duplicates(emb, threshold=0.95, n_prior=50)
    assert rep[50:].tolist() == list(range(10))


def test_dedup_text_fields():
    hist = '[{"role": "user", "content": "Earlier TURN"}]'
    assert dd.dedup_text("Sys", hist, "Hello  World", "Bye\nnow") == "sys earlier turn hello world bye now"
    assert dd.dedup_text("Sys", hist, "Hello", "Bye", ("prompt", "response")) == "hello bye"
