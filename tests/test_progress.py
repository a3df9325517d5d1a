"""Progress of long stages on a non-interactive stream (a job log): periodic lines, never carriage
returns; on a terminal a tqdm bar (issue 21 item 1). Pure: no Ray."""
from __future__ import annotations

import io
import sys

from rayft.progress import Lines, bar


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_lines_every_interval_and_at_the_end():
    out, clock = io.StringIO(), Clock()
    with Lines(1000, "embed", "frame", out, every_s=30.0, clock=clock) as b:
        for _ in range(100):  # 100 updates of 10 frames, one per second: lines at 30, 60, 90 s
            clock.t += 1.0
            b.update(10)
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and len(lines) == 4, text  # 3 periodic + the final one
    assert lines[0] == "[rayft] embed 300/1000 frames | 10.0 frames/s | 30 s | ETA 70 s"
    assert lines[-1] == "[rayft] embed 1000/1000 frames | 10.0 frames/s | 100 s"


def test_bar_picks_lines_off_a_terminal_and_tqdm_on_one(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    pipe = io.StringIO()
    with bar(50, "embed", "frame", file=pipe) as b:
        for _ in range(50):
            b.update(1)
    assert isinstance(b, Lines) and "\r" not in pipe.getvalue()
    assert pipe.getvalue().splitlines()[-1].startswith("[rayft] embed 50/50 frames")
    tty = Tty()
    with bar(50, "embed", "frame", file=tty) as b:
        b.update(50)
    assert not isinstance(b, Lines) and "\r" in tty.getvalue()  # tqdm redraws in place on a terminal
    quiet = io.StringIO()
    with bar(50, "embed", "frame", enabled=False, file=quiet) as b:
        b.update(50)
    assert quiet.getvalue() == ""


def test_frames_embed_progress_in_a_job_log(monkeypatch):
    from rayft.frames.run import _progress

    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with _progress(8, True) as b:
        b.update(8)
    assert "\r" not in err.getvalue() and err.getvalue().startswith("[rayft] embed 8/8 frames")
