"""Pure metrics: token loss aggregation, perplexity, and lexical similarity (chrF, ROUGE-L).

The users' own similarity metric (W2) is embedding cosine similarity; it needs a model and
lives in ``scorer.Similarity``. When no embedding model is configured, one of these lexical
metrics stands in, each in [0, 1], higher is better:

* ``chrf``: chrF (Popović 2015): character n-gram F-score, n = 1..6, beta = 2 (recall
  weighted twice as much as precision), whitespace removed first, so it works the same on
  Chinese (no word boundaries) and English. Averaged precision/recall over the n-gram
  orders that exist in both strings (sentence-level chrF, as sacrebleu computes it).
* ``rougeL``: ROUGE-L F1: longest common subsequence over tokens, where a token is a
  whitespace-separated word, and every CJK character is its own token.
"""
from __future__ import annotations

import math
import re
from collections import Counter

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")


def mean_token_loss(loss_sums: list[float], token_counts: list[float]) -> float:
    """Token-weighted mean loss over rows (what training reports as val loss)."""
    tokens = sum(token_counts)
    if tokens <= 0:
        return float("nan")
    return float(sum(loss_sums)) / tokens


def perplexity(loss: float) -> float:
    """exp(loss); +inf when it overflows, NaN stays NaN (the gate rejects both)."""
    if math.isnan(loss):
        return float("nan")
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


def _char_ngrams(text: str, n: int) -> Counter:
    return Counter(text[i:i + n] for i in range(len(text) - n + 1))


def chrf(hypothesis: str, reference: str, max_n: int = 6, beta: float = 2.0) -> float:
    """Sentence chrF in [0, 1]; 1.0 for identical non-empty strings, 0.0 if either is empty."""
    hyp = "".join(hypothesis.split())
    ref = "".join(reference.split())
    if not hyp or not ref:
        return 1.0 if hyp == ref else 0.0
    precs, recs = [], []
    for n in range(1, max_n + 1):
        h, r = _char_ngrams(hyp, n), _char_ngrams(ref, n)
        if not h or not r:
            continue
        match = sum((h & r).values())
        precs.append(match / sum(h.values()))
        recs.append(match / sum(r.values()))
    if not precs:
        return 0.0
    p, rc = sum(precs) / len(precs), sum(recs) / len(recs)
    if p + rc == 0:
        return 0.0
    b2 = beta * beta
    return (1 + b2) * p * rc / (b2 * p + rc)


def tokens(text: str) -> list[str]:
    """Words split on whitespace, with every CJK character its own token."""
    return _CJK.sub(lambda m: f" {m.group(0)} ", text).split()


def _lcs(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F1 in [0, 1] over ``tokens``."""
    h, r = tokens(hypothesis), tokens(reference)
    if not h or not r:
        return 1.0 if h == r else 0.0
    lcs = _lcs(h, r)
    if lcs == 0:
        return 0.0
    p, rc = lcs / len(h), lcs / len(r)
    return 2 * p * rc / (p + rc)


LEXICAL = {"chrf": chrf, "rougeL": rouge_l}


def cosine(a, b) -> float:
    """Cosine similarity of two vectors (plain sequences or numpy arrays)."""
    dot = sum(float(x) * float(y) for x, y in zip(a, b))
    na = math.sqrt(sum(float(x) ** 2 for x in a))
    nb = math.sqrt(sum(float(y) ** 2 for y in b))
    if na == 0 or nb == 0:
        return 0.0
    return dot / (na * nb)


def summarize(rows: list[dict], prefix: str) -> dict:
    """Per-split summary for one model from scored rows.

    ``rows`` carry ``{prefix}_loss_sum``, ``{prefix}_tokens`` and (when generation ran)
    ``{prefix}_similarity``. Returns ``{"loss", "perplexity", "similarity", "rows", "tokens"}``.
    """
    loss = mean_token_loss([r[f"{prefix}_loss_sum"] for r in rows], [r[f"{prefix}_tokens"] for r in rows])
    sims = [r[f"{prefix}_similarity"] for r in rows if r.get(f"{prefix}_similarity") is not None]
    return {
        "loss": loss,
        "perplexity": perplexity(loss),
        "similarity": (sum(sims) / len(sims)) if sims else None,
        "rows": len(rows),
        "tokens": int(sum(r[f"{prefix}_tokens"] for r in rows)),
    }
