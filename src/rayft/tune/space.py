"""Search spaces and per-trial resources, checked before any trial starts. No Ray.

A space maps train config keys to one spec each: ``{choice: [...]}``, ``{grid: [...]}``,
``{uniform: [lo, hi]}`` or ``{loguniform: [lo, hi]}``. Every problem found is reported
at once, each with the key and the reason.
"""
from __future__ import annotations

import difflib
import itertools
import json
import math
from dataclasses import dataclass
from typing import Any

from ..config import ConfigError, coerce, deep_merge, from_dict, leaves, to_dict
from ..train.config import TrainConfig

KINDS = ("choice", "grid", "uniform", "loguniform")
# Keys whose value changes what the sweep driver reads and tokenizes (once per value,
# before trials start, so trials never need CPUs for Ray Data tasks).
DATA_PREFIXES = ("data.", "model.")
REFUSED = {
    "run.": "run.* is set by the sweep (each trial's run directory is <sweep>/trials/<trial id>); "
            "a fixed run.seed belongs in base.overrides",
    "scaling.": "scaling.* sets each trial's resources, which must be the same for every trial to pack "
                "them onto the cluster; set it in base.overrides",
}


@dataclass
class Param:
    """One searched key: ``values`` for choice/grid, ``(lo, hi)`` bounds for uniform/loguniform."""

    key: str
    kind: str
    values: list


def train_leaves(cls: type = TrainConfig, prefix: str = "") -> dict[str, Any]:
    """Every leaf key of the train config (``train.lr``) -> its annotated type."""
    return leaves(cls, prefix)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested or dotted mapping -> {dotted key: value}; later keys win (CLI overrides come last)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and not _is_spec(v):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def nest(flat: dict[str, Any]) -> dict:
    out: dict = {}
    for key, v in flat.items():
        cur = out
        *head, last = key.split(".")
        for h in head:
            cur = cur.setdefault(h, {})
        cur[last] = v
    return out


def _is_spec(v: dict) -> bool:
    return bool(v) and any(k in KINDS for k in v)


def _unknown(key: str, leaves: dict) -> str:
    near = difflib.get_close_matches(key, list(leaves), n=1)
    return f"'{key}' is not a train config key" + (f" (did you mean {near[0]}?)" if near else "")


def parse_space(raw: dict, base: dict, fixed: set[str]) -> list[Param]:
    """Validate ``raw`` against the train config built from ``base``; ConfigError lists every problem.

    ``fixed`` are the keys set in base.overrides: searching one of them too is contradictory.
    """
    leaves = train_leaves()
    flat = flatten(raw or {})
    if not flat:
        raise ConfigError("space: the search space is empty; add at least one key, e.g. "
                          "space: {train.lr: {loguniform: [1.0e-4, 1.0e-2]}} (or use `rayft train`)")
    problems, params = [], []
    for key, spec in flat.items():
        where = f"space.{key}"
        if key not in leaves:
            problems.append(f"{where}: {_unknown(key, leaves)}")
            continue
        refused = next((why for pre, why in REFUSED.items() if key.startswith(pre)), None)
        if refused:
            problems.append(f"{where}: {refused}")
            continue
        if key in fixed:
            problems.append(f"{where}: also fixed in base.overrides; a key is either searched or fixed")
            continue
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
            problems.append(f"{where}: expected exactly one of {{{' | '.join(KINDS)}: ...}}, got {spec!r}"
                            + (" (a fixed value belongs in base.overrides)" if not isinstance(spec, dict) else ""))
            continue
        kind, vals = next(iter(spec.items()))
        if isinstance(vals, list):  # typed like the field: YAML reads 1e-4 (no dot) as a string
            try:
                vals = [coerce(v, float if kind in ("uniform", "loguniform") else leaves[key], f"{kind}[{i}]")
                        for i, v in enumerate(vals)]
            except ConfigError as e:
                problems.append(f"{where}: {e}")
                continue
        msg = _check(key, kind, vals, leaves[key], base)
        if msg:
            problems.append(f"{where}: {msg}")
        else:
            params.append(Param(key, kind, list(vals)))
    if problems:
        raise ConfigError("bad search space:\n  " + "\n  ".join(problems))
    return params


def _check(key: str, kind: str, vals: Any, tp: Any, base: dict) -> str | None:
    """Reason the spec is unusable, or None. Each value must build a valid train config."""
    if not isinstance(vals, list) or not vals:
        return f"{kind}: expected a non-empty list, got {vals!r}"
    if kind in ("choice", "grid"):
        if len({json.dumps(v, sort_keys=True) for v in vals}) != len(vals):
            return f"{kind}: repeated values in {vals!r}"
        probe = vals
    else:
        if tp is not float:
            return (f"{kind} samples real numbers but {key} is {getattr(tp, '__name__', tp)}; "
                    "use choice or grid")
        if key.startswith(DATA_PREFIXES):
            return f"{kind}: {key} changes the tokenized data, which is prepared once per value; use choice or grid"
        if len(vals) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            return f"{kind}: expected [low, high] numbers, got {vals!r}"
        lo, hi = vals
        if not lo < hi:
            return f"{kind}: empty range [{lo}, {hi}] (low must be below high)"
        if kind == "loguniform" and lo <= 0:
            return f"loguniform: bounds must be > 0, got [{lo}, {hi}]"
        probe = [lo, hi]
    for v in probe:
        try:
            trial_config(base, {key: v})
        except ConfigError as e:
            return f"value {v!r} rejected: {e}"
    return None


def trial_config(base: dict, params: dict[str, Any], **run: Any) -> TrainConfig:
    """The train config of one trial: ``base`` (nested dict) with ``params`` (dotted) applied."""
    data = deep_merge(base, nest(params))
    if run:
        data = deep_merge(data, {"run": run})
    return from_dict(TrainConfig, data)


def data_variants(params: list[Param]) -> list[dict[str, Any]]:
    """Every combination of the searched keys that change the tokenized data ([{}] if none)."""
    ps = [p for p in params if p.key.startswith(DATA_PREFIXES)]
    return [dict(zip([p.key for p in ps], combo)) for combo in itertools.product(*[p.values for p in ps])]


def data_key(cfg: TrainConfig) -> str:
    """Identifies the prepared + tokenized datasets a trial can reuse."""
    d = to_dict(cfg)
    return json.dumps({"data": d["data"], "model": d["model"], "seed": cfg.run.seed,
                       "workers": cfg.scaling.num_workers}, sort_keys=True)


def trial_resources(cfg: TrainConfig, trial_cpus: float, trial_memory_gb: float = 0.0) -> dict[str, float]:
    """Everything one trial holds: its driver plus its Ray Train workers (from the scaling profile)."""
    s = cfg.scaling
    res = {"CPU": trial_cpus + s.num_workers * s.cpus_per_worker}
    if s.use_gpu:
        res["GPU"] = float(s.num_workers)
    mem = trial_memory_gb + s.num_workers * s.memory_per_worker_gb
    if mem:
        res["memory"] = mem * 2**30
    return res


def max_concurrency(per_trial: dict[str, float], cluster: dict[str, float], cap: int = 0) -> int:
    """Trials that fit side by side; ConfigError when not even one does."""
    fits = []
    for r, need in per_trial.items():
        have = cluster.get(r, 0.0)
        if need > have + 1e-9:
            unit = (lambda x: f"{x / 2**30:.1f} GB") if r == "memory" else (lambda x: f"{x:g}")
            raise ConfigError(f"one trial needs {unit(need)} {r} (the trial's driver + scaling.num_workers x "
                              f"per-worker {r}) but the cluster has {unit(have)}; lower scaling.num_workers, "
                              f"scaling.cpus_per_worker or the memory profile in base.overrides")
        # a tiny epsilon: 3 x 0.6 CPU must fit on 1.8 despite float rounding
        fits.append(math.floor(have / need + 1e-6))
    n = min(fits) if fits else 1
    return min(n, cap) if cap else n
