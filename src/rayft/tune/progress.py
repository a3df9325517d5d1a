"""The sweep's console line (issue 21): rayft's own progress for `rayft sweep`, while Tune's
status table stays off unless ``--verbose``. A module-level class so Tune can pickle the
RunConfig it belongs to (a sweep resumes from that pickle)."""
from __future__ import annotations

import sys
import time

from ray import tune


class SweepProgress(tune.Callback):
    """One ``[rayft] sweep`` line every ``every_s`` seconds and at each trial's end: trials done
    / total, running, errored, and the best validation loss so far."""

    def __init__(self, total: int, file=None, every_s: float = 30.0):
        self.total, self.file, self.every_s = total, file, every_s
        self.t0 = self.t_line = time.monotonic()
        self.best: tuple[float, str] | None = None
        self.ended: dict[str, str] = {}  # Tune calls on_trial_complete before it marks the trial TERMINATED

    def __setstate__(self, state):  # restored by a resumed sweep: its clock starts now
        self.__dict__.update(state)
        self.t0 = self.t_line = time.monotonic()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        vl = result.get("val_loss")
        if isinstance(vl, (int, float)) and vl == vl and (self.best is None or vl < self.best[0]):
            self.best = (float(vl), trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended[trial.trial_id] = "TERMINATED"
        self._line(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended[trial.trial_id] = "ERROR"
        self._line(trials)

    def on_step_end(self, iteration, trials, **info):
        if time.monotonic() - self.t_line >= self.every_s:
            self._line(trials)

    def _line(self, trials) -> None:
        st = [t.status if t.status in ("TERMINATED", "ERROR") else self.ended.get(t.trial_id, t.status)
              for t in trials]
        done = sum(s in ("TERMINATED", "ERROR") for s in st)
        err = st.count("ERROR")
        best = f" | best val loss {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
        print(f"[rayft] sweep {done}/{max(self.total, len(st))} trials done, {st.count('RUNNING')} running"
              + (f", {err} errored" if err else "") + f"{best} | {time.monotonic() - self.t0:.0f} s",
              file=self.file or sys.stderr, flush=True)
        self.t_line = time.monotonic()
