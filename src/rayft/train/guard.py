"""Training-time guard (W5): what to do when the loss goes NaN/Inf or val loss keeps rising.

A pure policy object, no Ray or torch, so the train loop can own all side effects. It is
fed numbers and returns ``Action``s; its whole state round-trips through ``state_dict`` /
``from_state_dict`` (JSON-safe) so it can live in a checkpoint's ``state.json`` and
survive a resume.

Contract for the caller (the train loop):

* ``on_step(step, loss)`` after every optimizer step, with the step number just finished
  and its (all-reduced) training loss.
    - finite loss -> ``Action("continue")``.
    - NaN/Inf loss, fewer than ``max_rollbacks`` rollbacks so far -> ``Action("rollback",
      rollback_to=S, lr_scale=x)``: restore model/optimizer/scheduler/RNG from the last
      checkpoint reported healthy via ``on_checkpoint`` (S == 0 means the initial weights:
      no healthy checkpoint yet), resume from step S, and multiply the configured
      learning rate by ``lr_scale`` from then on (``lr_factor`` ** number of rollbacks,
      0.5, 0.25, ... by default). The rolled-back steps are re-run.
    - NaN/Inf loss after ``max_rollbacks`` rollbacks -> ``Action("stop")``: give up
      cleanly (fail the run with the events in the report) rather than loop forever.
* ``on_checkpoint(step)`` after a checkpoint at ``step`` has been saved. It becomes the
  rollback target only if every loss seen since the previous healthy point was finite;
  returns whether it was accepted as healthy. When a step both validates and checkpoints,
  call ``on_val_loss`` first, so a NaN validation never marks its checkpoint healthy.
* ``on_val_loss(step, val_loss)`` after each validation. NaN/Inf is handled like a
  non-finite training loss (same rollback/stop actions). A finite value that is higher
  than the previous one ``rising_evals`` times in a row (3 by default, i.e. four
  evaluations each worse than the last) returns ``Action("warn")`` once per streak; a
  drop resets the streak. Training continues on a warning.
* Every action other than plain "continue" also appends an event dict to
  ``guard.events`` (``{"event", "step", ...}``) and returns it in ``Action.events``; the
  loop writes them to metrics.jsonl and the run report.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from pydantic import PositiveInt

from ..config import Section, opt, to_dict


class GuardCfg(Section):
    max_rollbacks: int = opt(3, "NaN/Inf rollbacks allowed before the run stops", ge=0)
    lr_factor: float = opt(0.5, "learning-rate multiplier applied at each rollback", gt=0, le=1)
    rising_evals: int = opt(3, "warn when validation loss rises this many evaluations in a row", ge=1)
    inject_nan_at: list[PositiveInt] = opt([], "fault injection for testing the guard: make the training loss "
                                           "(and so the gradients) NaN the first time each of these steps runs")


@dataclass
class Action:
    kind: Literal["continue", "rollback", "stop", "warn"]
    rollback_to: int | None = None
    lr_scale: float = 1.0
    events: list[dict] = field(default_factory=list)


class TrainingGuard:
    """See the module docstring for the calling contract."""

    def __init__(self, cfg: GuardCfg | None = None):
        self.cfg = cfg or GuardCfg()
        self.rollbacks = 0
        self.lr_scale = 1.0
        self.healthy_step = 0          # 0: the initial weights
        self.clean_since_healthy = True
        self.last_val: float | None = None
        self.rising = 0
        self.events: list[dict] = []

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"cfg": to_dict(self.cfg), "rollbacks": self.rollbacks, "lr_scale": self.lr_scale,
                "healthy_step": self.healthy_step, "clean_since_healthy": self.clean_since_healthy,
                "last_val": self.last_val, "rising": self.rising, "events": list(self.events)}

    @classmethod
    def from_state_dict(cls, d: dict) -> "TrainingGuard":
        g = cls(GuardCfg(**{k: v for k, v in d["cfg"].items() if k in GuardCfg.model_fields}))
        for k in ("rollbacks", "lr_scale", "healthy_step", "clean_since_healthy", "last_val", "rising"):
            setattr(g, k, d[k])
        g.events = list(d.get("events", []))
        return g

    # -- policy --------------------------------------------------------------------------
    def _emit(self, kind: str, event: dict, **kw) -> Action:
        self.events.append(event)
        return Action(kind, events=[event], lr_scale=self.lr_scale, **kw)

    def _nonfinite(self, step: int, what: str, value: float) -> Action:
        self.clean_since_healthy = False
        if self.rollbacks >= self.cfg.max_rollbacks:
            return self._emit("stop", {"event": "nonfinite_stop", "step": step, "what": what,
                                       "value": str(value), "rollbacks": self.rollbacks,
                                       "message": f"{what} is {value} at step {step} after "
                                                  f"{self.rollbacks} rollbacks; stopping"})
        self.rollbacks += 1
        self.lr_scale *= self.cfg.lr_factor
        # After restoring, the healthy checkpoint is clean again; the val streak restarts.
        self.clean_since_healthy = True
        self.last_val, self.rising = None, 0
        return self._emit("rollback", {
            "event": "nonfinite_rollback", "step": step, "what": what, "value": str(value),
            "rollback_to": self.healthy_step, "lr_scale": self.lr_scale, "rollbacks": self.rollbacks,
            "message": f"{what} is {value} at step {step}: rolling back to step {self.healthy_step}, "
                       f"learning rate x{self.lr_scale:g}"}, rollback_to=self.healthy_step)

    def on_step(self, step: int, loss: float) -> Action:
        """Feed one training step's loss; see the module contract."""
        if not math.isfinite(loss):
            return self._nonfinite(step, "train loss", loss)
        return Action("continue", lr_scale=self.lr_scale)

    def on_checkpoint(self, step: int) -> bool:
        """A checkpoint at ``step`` was saved; it is the new rollback target if clean."""
        if self.clean_since_healthy:
            self.healthy_step = step
        return self.clean_since_healthy

    def on_val_loss(self, step: int, val_loss: float) -> Action:
        """Feed one validation loss; see the module contract."""
        if not math.isfinite(val_loss):
            return self._nonfinite(step, "val loss", val_loss)
        prev, self.last_val = self.last_val, val_loss
        if prev is None or val_loss <= prev:
            self.rising = 0
            return Action("continue", lr_scale=self.lr_scale)
        self.rising += 1
        if self.rising == self.cfg.rising_evals:
            return self._emit("warn", {"event": "val_loss_rising", "step": step, "val_loss": val_loss,
                                       "evaluations": self.rising,
                                       "message": f"validation loss rose {self.rising} evaluations in a row "
                                                  f"(now {val_loss:.4f} at step {step})"})
        return Action("continue", lr_scale=self.lr_scale)
