"""SweepConfig -> a checked plan (space, base train config, search, ASHA bounds). No Ray."""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import objstore
from ..config import ConfigError, deep_merge, read_yaml, to_dict, uri_scheme
from ..train.config import TrainConfig
from .config import SweepConfig
from .space import Param, flatten, nest, parse_space, trial_config


@dataclass
class Plan:
    sweep_dir: Path
    base: dict                      # nested train config dict shared by every trial
    base_cfg: TrainConfig
    params: list[Param]
    search: str                     # random | optuna
    max_steps: int                  # largest train.max_steps any trial can have (ASHA max_t)
    spec: dict = field(default_factory=dict)  # what must match for a rerun to resume this sweep
    location: objstore.Location | None = None  # sweep.dir=s3://...: the sweep in the bucket (sweep_dir: local copy)

    @property
    def shown(self) -> str:
        """The sweep directory as output names it (no keys)."""
        return self.location.shown if self.location else str(self.sweep_dir)


def make_plan(scfg: SweepConfig) -> Plan:
    """Everything checkable without Ray or data; ConfigError says what is wrong and where."""
    recipe = Path(os.path.expanduser(scfg.base.recipe))
    try:
        base = read_yaml(recipe)
    except ConfigError as e:
        raise ConfigError(f"base.recipe: {e}") from None
    fixed = flatten(scfg.base.overrides or {})
    base = deep_merge(base, nest(fixed))
    try:
        base_cfg = trial_config(base, {})
    except ConfigError as e:
        raise ConfigError(f"base ({recipe} + base.overrides): {e}") from None
    base = to_dict(base_cfg)  # fully resolved: defaults included, so the spec below is complete
    params = parse_space(scfg.space, base, set(fixed))
    has_grid = any(p.kind == "grid" for p in params)
    search = scfg.sweep.search
    # optuna's categorical distribution holds only scalars (no list-valued choices)
    bad_cat = [p for p in params if any(not isinstance(v, (int, float, str, bool)) for v in p.values)]
    if search == "auto":
        search = "optuna" if importlib.util.find_spec("optuna") and not (has_grid or bad_cat) else "random"
    elif search == "optuna":
        if bad_cat:
            raise ConfigError(f"sweep.search=optuna: choice values of {bad_cat[0].key} must be numbers, strings "
                              "or booleans (optuna categorical); use sweep.search=random")
        if has_grid:
            raise ConfigError("sweep.search=optuna samples every key; grid is not supported there "
                              "(use choice, or sweep.search=random)")
        if not importlib.util.find_spec("optuna"):
            raise ConfigError("sweep.search=optuna: optuna is not installed (pip install optuna)")
    steps = next((p.values for p in params if p.key == "train.max_steps"), [base_cfg.train.max_steps])
    max_steps = int(max(steps))
    if scfg.scheduler.kind == "asha":
        t = base_cfg.train
        if "train.eval_every" not in {p.key for p in params} and not 0 < t.eval_every < min(steps):
            raise ConfigError(
                f"scheduler.kind=asha ranks trials on validation loss while they run, but train.eval_every="
                f"{t.eval_every} gives it only at the end (step {min(steps)}); set base.overrides.train."
                f"eval_every to a few steps (e.g. {max(1, min(steps) // 6)}) or scheduler.kind=none")
        if scfg.scheduler.grace_period >= max_steps:
            raise ConfigError(f"scheduler.grace_period={scfg.scheduler.grace_period} >= train.max_steps="
                              f"{max_steps}: ASHA could never stop a trial early; lower it or use "
                              "scheduler.kind=none")
    d, loc = scfg.sweep.dir, None
    if objstore.is_remote(d):  # Tune's experiment, the trials and the summary files go to the bucket
        loc = objstore.filesystem(d).child(scfg.sweep.name)
        sweep_dir = objstore.work_dir("sweeps", d) / scfg.sweep.name
    elif uri_scheme(d) == "file":
        sweep_dir = Path(objstore.filesystem(d).path) / scfg.sweep.name
    else:
        sweep_dir = Path(os.path.expanduser(d)) / scfg.sweep.name
    spec = {"base": base, "space": {p.key: {p.kind: p.values} for p in params}, "search": search,
            "num_samples": scfg.sweep.num_samples, "seed": scfg.sweep.seed, "scheduler": to_dict(scfg.scheduler)}
    return Plan(sweep_dir, base, base_cfg, params, search, max_steps, json.loads(json.dumps(spec)), loc)


def check_resumable(plan: Plan, saved: dict) -> None:
    """A rerun resumes the sweep only when it would produce the same trials."""
    diff = sorted(k for k in plan.spec if plan.spec[k] != saved.get(k))
    if not diff:
        return
    detail = []
    if "base" in diff:
        a, b = flatten(saved.get("base") or {}), flatten(plan.spec["base"])
        detail = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    raise ConfigError(f"sweep {plan.shown} already exists with a different {', '.join(diff)}"
                      + (f" ({'; '.join(detail[:5])})" if detail else "")
                      + "; rerun with the same config to resume it, or set sweep.overwrite=true or a new sweep.name")
