"""One progress display for long stages: a tqdm bar on an interactive terminal, and on anything
else (a pipe, a ``ray job submit`` log) a plain line every ``LINE_EVERY_S`` seconds plus one at
the end - never carriage returns, which a job log would keep as one endless line."""
from __future__ import annotations

import sys
import time

LINE_EVERY_S = 30.0


class Lines:
    """tqdm's ``update``/``close``/context-manager surface, printing periodic lines."""

    def __init__(self, total: int | None, desc: str, unit: str, file, every_s: float = LINE_EVERY_S,
                 clock=time.monotonic):
        self.total, self.desc, self.unit, self.file, self.every_s, self.clock = total, desc, unit, file, every_s, clock
        self.n, self.t0 = 0, clock()
        self.t_line, self.n_line, self.closed = self.t0, 0, False

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self.t_line >= self.every_s:
            self._line()

    def _line(self) -> None:
        now = self.clock()
        dt = now - self.t0
        rate = self.n / dt if dt > 0 else 0.0
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        eta = f" | ETA {(self.total - self.n) / rate:.0f} s" if self.total and rate > 0 and self.n < self.total else ""
        print(f"[rayft] {self.desc} {done} {self.unit}s | {rate:.1f} {self.unit}s/s | {dt:.0f} s{eta}",
              file=self.file, flush=True)
        self.t_line, self.n_line = now, self.n

    def close(self) -> None:
        if not self.closed and self.n != self.n_line:
            self._line()
        self.closed = True

    def __enter__(self) -> "Lines":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(total: int | None, desc: str, unit: str, enabled: bool = True, file=None):
    """``with bar(n, "embed", "frame") as b: b.update(k)``: tqdm when ``file`` (stderr) is a
    terminal, ``Lines`` otherwise; nothing at all when not ``enabled``."""
    from tqdm import tqdm

    file = file if file is not None else sys.stderr
    if enabled and not (hasattr(file, "isatty") and file.isatty()):
        return Lines(total, desc, unit, file)
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, smoothing=0.1, dynamic_ncols=True,
                disable=not enabled, file=file)
