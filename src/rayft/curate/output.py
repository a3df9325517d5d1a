"""Write a run's outputs into its staging directory and build ``report.json``. Pure (no Ray).

Staging mirrors the final layout (see ``rayft.curate.config``); ``Ledger.publish`` moves it.
"""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..data.records import PAIR_COLUMNS, PAIRS_SCHEMA
from ..storage import atomic_write_json
from .config import CurateConfig
from .filters import redact_record

FILTERS = ("read", "normalize", "low_value", "secrets", "language", "exact_dedup", "near_dedup", "embed_dedup")
SPLITS = ("train", "val", "golden")
_UNSCANNED = {"read", "normalize", "low_value", "secrets"}  # removed before/by the secrets scan


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name) or "und"


def prior_val_counts(out: Path) -> dict[str, int]:
    """Validation rows earlier runs published, per language folder (``<lang>/val/*.parquet``)."""
    counts: dict[str, int] = defaultdict(int)
    for p in sorted(Path(out).glob("*/val/*.parquet")):
        counts[p.parent.parent.name] += pq.ParquetFile(p).metadata.num_rows
    return dict(counts)


def write_splits(table: pa.Table, staging: Path, run_id: str, rows_per_file: int) -> dict[str, dict[str, int]]:
    """Kept rows -> ``<lang>/<split>/part-<run>-<k>.parquet`` (PAIRS_SCHEMA). Returns counts."""
    kept = table.filter(pc.equal(table["_filter"], ""))
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {s: 0 for s in SPLITS})
    if not kept.num_rows:
        return {}
    for lang in sorted(set(kept["language"].to_pylist())):
        by_lang = kept.filter(pc.equal(kept["language"], lang))
        for split in SPLITS:
            part = by_lang.filter(pc.equal(by_lang["_split"], split))
            if not part.num_rows:
                continue
            part = part.select(PAIR_COLUMNS).cast(PAIRS_SCHEMA)
            for k, start in enumerate(range(0, part.num_rows, rows_per_file)):
                path = staging / _safe(lang) / split / f"part-{run_id}-{k:05d}.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(part.slice(start, rows_per_file), path, compression="zstd")
            counts[lang][split] = part.num_rows
    return dict(counts)


def write_rejects(table: pa.Table, staging: Path, run_id: str, cfg: CurateConfig) -> dict[str, int]:
    """Removed rows -> ``rejects/<run>.<filter>.jsonl`` with filter, reason, file, line, id, record."""
    rej = table.filter(pc.not_equal(table["_filter"], ""))
    out: dict[str, list[str]] = defaultdict(list)
    cols = {c: rej[c].to_pylist() for c in ("_filter", "_reason", "file", "line", "id", "_raw", "_masked")}
    for k in range(rej.num_rows):
        raw = cols["_raw"][k]
        try:
            record = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            record = raw
        # Rows removed after the secrets filter with nothing masked held no secret: skip the scan.
        if cfg.secrets.redact_rejects and (cols["_filter"][k] in _UNSCANNED or cols["_masked"][k]):
            record = redact_record(record, cfg.secrets)
        reason = cols["_reason"][k]
        if cfg.secrets.redact_rejects and reason:  # read errors may quote a field's value
            reason = redact_record(reason, cfg.secrets)
        line = {"filter": cols["_filter"][k], "reason": reason, "file": cols["file"][k],
                "line": cols["line"][k], "id": cols["id"][k] or None, "record": record}
        out[cols["_filter"][k]].append(json.dumps(line, ensure_ascii=False, default=str))
    for name, lines in out.items():
        path = staging / "rejects" / f"{run_id}.{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {k: len(v) for k, v in out.items()}


def build_report(table: pa.Table, cfg: CurateConfig, run_id: str, *, files: dict, skipped: list[str],
                 splits: dict, timing: dict) -> dict:
    """rows_in = rows_kept + rows_rejected, and per filter ``in - removed`` = next filter's ``in``."""
    by_filter = Counter(table["_filter"].to_pylist())
    rows_in = table.num_rows
    filters, remaining = {}, rows_in
    for name in FILTERS:
        removed = by_filter.get(name, 0)
        filters[name] = {"in": remaining, "removed": removed}
        remaining -= removed
    masked = Counter(k for m in table["_masked"].to_pylist() if m for k in m.split(","))
    reasons = table.filter(pc.equal(table["_filter"], "secrets"))["_reason"].to_pylist()
    dropped = Counter(part.split(" in ")[0] for r in reasons for part in r.removeprefix("secrets: ").split(", "))
    filters["secrets"].update({"dropped_by_kind": dict(dropped), "masked_rows": sum(1 for m in table["_masked"].to_pylist()
                                                                                    if m),
                               "masked_by_kind": dict(masked)})
    per_file: dict[str, dict] = {}
    f_col, filt = table["file"].to_pylist(), table["_filter"].to_pylist()
    for f, x in zip(f_col, filt):
        d = per_file.setdefault(f, {"rows": 0, "kept": 0, "read_errors": 0})
        d["rows"] += 1
        d["kept"] += x == ""
        d["read_errors"] += x == "read"
    unreadable = []
    for f, d in per_file.items():
        if d["rows"] == d["read_errors"]:
            first = table.filter(pc.equal(table["file"], f))["_reason"][0].as_py()
            unreadable.append({"path": f, "reason": first})
    kept = remaining
    gold = table.filter(table["_golden"])
    golden = {"files_rows_in": gold.num_rows, "files_rows_kept": int(pc.sum(pc.equal(gold["_filter"], "")).as_py() or 0),
              "split_rows": sum(v.get("golden", 0) for v in splits.values())}
    return {
        "run": run_id, "status": "ok",
        "rows_in": rows_in, "rows_kept": kept, "rows_rejected": rows_in - kept,
        "filters": filters,
        "languages": splits,
        "golden": golden,
        "files": {"ingested": len(files), "skipped_unchanged": len(skipped), "unreadable": unreadable,
                  "per_file": per_file},
        "timing": timing,
    }


def write_report(staging: Path, run_id: str, report: dict) -> None:
    atomic_write_json(staging / "reports" / f"{run_id}.json", report)
    atomic_write_json(staging / "report.json", report)
