"""The promotion gate: ``decide(metrics, GateCfg)`` -> decision + every reason. Pure.

``metrics`` is the ``eval.json`` metrics block::

    {"candidate": {"val": {"loss", "perplexity", "similarity", "rows", "tokens"},
                   "golden": {...same keys...}},
     "champion":  {"val": {...}, "golden": {...}}}

Rules (defaults from W5), all checked and all reported, whichever fails first:

1. finite: any NaN/Inf number anywhere in ``metrics`` rejects (a diverged candidate, or a
   champion whose scores cannot be compared against).
2. golden: the candidate's golden score must beat the champion's by at least
   ``min_golden_improvement`` relative (1 % by default), in the metric's own direction
   (similarity: higher is better; loss/perplexity: lower is better).
3. val: the candidate must not regress on validation by more than ``max_val_regression``
   relative (0 by default: equal or better).
"""
from __future__ import annotations

import math
from typing import Any, Literal

from ..config import Section, opt
from ..metric_direction import HIGHER_IS_BETTER


class GateCfg(Section):
    golden_metric: Literal["similarity", "loss", "perplexity"] = opt(
        "similarity", "golden-set score the candidate must improve: similarity (generated vs reference "
        "answer; the users' metric) | loss | perplexity")
    min_golden_improvement: float = opt(0.01, "required relative improvement over the champion on the "
                                        "golden set (0.01 = 1 %)", ge=0)
    val_metric: Literal["similarity", "loss", "perplexity"] = opt(
        "loss", "validation score that must not regress: loss | perplexity | similarity")
    max_val_regression: float = opt(0.0, "allowed relative regression on validation (0 = must be equal or better)", ge=0)
    require_val: bool = opt(True, "reject when there are no validation rows to check regression on")



def _nonfinite(obj: Any, path: str = "") -> list[str]:
    """Dotted paths of every NaN/Inf number inside nested dicts/lists."""
    out: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _nonfinite(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out += _nonfinite(v, f"{path}[{i}]")
    elif isinstance(obj, float) and not math.isfinite(obj):
        out.append(f"{path}={obj}")
    return out


def relative_gain(candidate: float, champion: float, higher_is_better: bool) -> float:
    """Improvement of candidate over champion as a fraction of |champion| (positive = better)."""
    diff = candidate - champion if higher_is_better else champion - candidate
    if champion == 0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / abs(champion)


def _score(metrics: dict, who: str, split: str, metric: str) -> float | None:
    v = metrics.get(who, {}).get(split, {}).get(metric)
    return None if v is None else float(v)


def decide(metrics: dict, cfg: GateCfg) -> dict:
    """Apply the gate. Returns ``{"accept", "decision", "reasons", "checks"}``.

    ``decision`` is "promote" or "reject"; ``reasons`` has one line per rule (passed or
    failed) so eval.json explains itself; ``checks`` has the same as structured records.
    """
    checks: list[dict] = []

    bad = _nonfinite(metrics)
    checks.append({"rule": "finite", "passed": not bad,
                   "detail": ("NaN/Inf in " + ", ".join(bad)) if bad else "all metrics finite"})

    for rule, split, metric, need in (
            ("golden", "golden", cfg.golden_metric, cfg.min_golden_improvement),
            ("val", "val", cfg.val_metric, -cfg.max_val_regression)):
        cand, champ = _score(metrics, "candidate", split, metric), _score(metrics, "champion", split, metric)
        rows = metrics.get("candidate", {}).get(split, {}).get("rows", 0)
        if rule == "val" and not rows and not cfg.require_val:
            checks.append({"rule": rule, "passed": True, "detail": "no validation rows; check skipped "
                           "(gate.require_val=false)"})
            continue
        if cand is None or champ is None:
            checks.append({"rule": rule, "passed": False,
                           "detail": f"{split} {metric} missing (candidate={cand}, champion={champ})"})
            continue
        gain = relative_gain(cand, champ, HIGHER_IS_BETTER[metric])
        passed = math.isfinite(cand) and math.isfinite(champ) and gain >= need - 1e-12
        arrow = "higher" if HIGHER_IS_BETTER[metric] else "lower"
        if rule == "golden":
            want = f"must improve by >= {need:.2%}"
        else:
            want = f"must not regress by more than {-need:.2%}"
        checks.append({"rule": rule, "passed": passed, "metric": metric, "candidate": cand,
                       "champion": champ, "relative_gain": gain,
                       "detail": f"{split} {metric} ({arrow} is better): candidate {cand:.6g} vs champion "
                                 f"{champ:.6g} = {gain:+.2%}; {want}"})

    accept = all(c["passed"] for c in checks)
    reasons = [("PASS " if c["passed"] else "FAIL ") + f"{c['rule']}: {c['detail']}" for c in checks]
    return {"accept": accept, "decision": "promote" if accept else "reject", "reasons": reasons,
            "checks": checks}
