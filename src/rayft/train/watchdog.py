"""RSS watchdog: a thread in every worker that notices when memory passes the stop line.

It never kills anything: it raises a flag, and the training loop (at the next micro-batch
boundary) agrees with the other workers, saves a checkpoint and stops with a message that
names the worker, its peak and the budget. Two readings per sample: psutil's current RSS
and the kernel's high-water mark (ru_maxrss), so a spike between samples still counts.
"""
from __future__ import annotations

import resource
import threading

from .memory import GB


def peak_rss_bytes() -> int:
    """This process's peak RSS so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssWatchdog(threading.Thread):
    """Samples RSS every ``interval_s``; ``tripped`` is set once it passes ``limit_bytes``."""

    def __init__(self, limit_bytes: float, interval_s: float = 0.05):
        super().__init__(daemon=True, name="rayft-rss-watchdog")
        import psutil

        self.proc = psutil.Process()
        self.limit = float(limit_bytes)
        self.interval = interval_s
        self.tripped = threading.Event()
        self._stop_evt = threading.Event()
        self.max_sampled = 0
        self.at_trip = 0  # RSS (max of both readings) when it tripped

    def sample(self) -> int:
        rss = max(self.proc.memory_info().rss, peak_rss_bytes())
        self.max_sampled = max(self.max_sampled, rss)
        if self.limit > 0 and rss > self.limit and not self.tripped.is_set():
            self.at_trip = rss
            self.tripped.set()
        return rss

    def run(self) -> None:
        while not self._stop_evt.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop_evt.set()


def stop_message(rank: int, peak_bytes: float, budget_gb: float, stop_fraction: float, step: int,
                 checkpoint: str) -> str:
    """The users' rule, stated: who passed the line, by how much, and where to resume from."""
    return (f"memory watchdog: worker rank {rank} reached {peak_bytes / GB:.2f} GB RSS, past "
            f"{stop_fraction:.0%} of its {budget_gb:g} GB budget ({budget_gb * stop_fraction:.2f} GB); "
            f"checkpointed step {step} to {checkpoint} and stopped. Rerun the same command to resume "
            "once the job fits (see the estimate printed at launch for what to change)")
