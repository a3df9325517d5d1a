"""The daemon's rules as pure functions (no Ray, no I/O except ``resource_usage``).

* ``parse_window`` / ``in_window``: local-time training window, may wrap midnight;
* ``should_skip``: the W5 rule "skip the next scheduled training when the last accepted
  improvement was < 0.5 % and no new data came";
* ``backoff``: wait before attempt ``n`` of a failed stage;
* ``plan_stages``: warm-up / full / incremental for a line, given its champion state;
* ``replay_sample``: deterministic sample of earlier rows by hash;
* ``stable_files``: files whose size and mtime did not change between two scans;
* ``resource_problems``: memory / disk thresholds.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import math
import re

from ..config import ConfigError

_HM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def parse_window(spec: str) -> tuple[int, int] | None:
    """'02:00-06:00' -> (120, 360) minutes after midnight; '' -> None (always open)."""
    spec = (spec or "").strip()
    if not spec:
        return None
    parts = [p.strip() for p in spec.split("-")]
    ms = [_HM.match(p) for p in parts] if len(parts) == 2 else []
    if len(ms) != 2 or not all(ms):
        raise ConfigError(f"watch.window: expected 'HH:MM-HH:MM' (local time, e.g. 02:00-06:00), got {spec!r}")
    a, b = (int(m.group(1)) * 60 + int(m.group(2)) for m in ms)
    if a == b:
        raise ConfigError(f"watch.window: start and end are equal in {spec!r}; use '' for always")
    return a, b


def in_window(spec: str, now: dt.datetime) -> bool:
    """True when ``now`` (local time) is inside the window [start, end); wraps midnight."""
    w = parse_window(spec)
    if w is None:
        return True
    a, b = w
    m = now.hour * 60 + now.minute
    return a <= m < b if a < b else (m >= a or m < b)


def next_window_start(spec: str, now: dt.datetime) -> dt.datetime | None:
    """When the window next opens (``now`` when it is open; None when there is no window)."""
    w = parse_window(spec)
    if w is None or in_window(spec, now):
        return None if w is None else now
    start = now.replace(hour=w[0] // 60, minute=w[0] % 60, second=0, microsecond=0)
    return start if start > now else start + dt.timedelta(days=1)


def should_skip(last_gain: float | None, new_rows: int, min_gain: float = 0.005) -> bool:
    """Skip a scheduled retrain: no new rows and the last accepted gain was below ``min_gain``.
    New data always trains; an unknown last gain (no accepted candidate yet) does not skip."""
    if new_rows > 0 or last_gain is None:
        return False
    return last_gain < min_gain


def backoff(attempt: int, base_s: float, max_s: float) -> float:
    """Seconds to wait before attempt ``attempt`` (1-based): 0, base, 2*base, 4*base, ... <= max."""
    if attempt <= 1:
        return 0.0
    return float(min(max_s, base_s * 2 ** (attempt - 2)))


def plan_stages(has_champion: bool, cycles_since_full: int, full_every: int, warmup: bool) -> list[str]:
    """The training stages of the next cycle of a line.

    No champion (or ``full_every`` cycles since the last full run): [warmup,] full, from the
    base model. Otherwise: incremental, from the champion's weights.
    """
    if not has_champion or (full_every > 0 and cycles_since_full + 1 >= full_every):
        return (["warmup"] if warmup else []) + ["full"]
    return ["incremental"]


def row_key(row_id: str, salt: str = "") -> str:
    return hashlib.sha256(f"{salt}\x00{row_id}".encode()).hexdigest()


def replay_sample(old_ids: list[str], n_new: int, ratio: float = 1.0, salt: str = "") -> list[int]:
    """Indices of the old rows to replay beside ``n_new`` new rows: ``round(ratio * n_new)``
    (at most all of them), the rows with the smallest salted hash of their id - the same
    sample for the same rows, whatever their order; returned in the input order."""
    k = min(len(old_ids), int(math.floor(ratio * n_new + 0.5)))
    if k <= 0:
        return []
    ranked = sorted(range(len(old_ids)), key=lambda i: (row_key(old_ids[i], salt), i))
    return sorted(ranked[:k])


def stable_files(prev: dict[str, tuple], cur: dict[str, tuple]) -> list[str]:
    """Files whose (size, mtime) snapshot is identical in two consecutive scans. A file seen
    for the first time, or still growing/being touched, is not stable yet."""
    return sorted(p for p, snap in cur.items() if prev.get(p) == snap)


def resource_problems(mem_percent: float, disk_free_gb: float, max_memory_percent: float,
                      min_disk_free_gb: float) -> list[str]:
    """Human-readable threshold violations (empty: training may run)."""
    out = []
    if max_memory_percent and mem_percent > max_memory_percent:
        out.append(f"node memory {mem_percent:.1f}% > {max_memory_percent:g}%")
    if min_disk_free_gb and disk_free_gb < min_disk_free_gb:
        out.append(f"disk free {disk_free_gb:.1f} GB < {min_disk_free_gb:g} GB")
    return out


def resource_usage(path: str) -> tuple[float, float]:
    """(node memory percent used, free GB on the filesystem holding ``path``) via psutil."""
    import psutil

    return psutil.virtual_memory().percent, psutil.disk_usage(path).free / 2**30


def steps_for_epochs(epochs: float, rows: int, workers: int, batch: int, accum: int) -> int:
    """Optimizer steps for ``epochs`` passes over ``rows`` rows (at least 1)."""
    per_step = max(1, workers * batch * accum)
    return max(1, int(math.ceil(epochs * rows / per_step)))


def relative_gain_of(eval_report: dict) -> float | None:
    """The golden-set relative gain the gate measured (None when it did not get that far)."""
    for c in eval_report.get("checks") or []:
        if c.get("rule") == "golden" and c.get("relative_gain") is not None:
            return float(c["relative_gain"])
    return None
