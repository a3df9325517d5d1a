"""``output.dir`` on an object store (``s3://bucket/prefix``, any ``pyarrow.fs`` URI).

The bucket holds the same layout as a local output directory (``rayft.curate.config``). A run
works in a fresh local copy (``$RAYFT_CACHE/curate/<digest of the URI>/out``) holding what it
reads: ``_ledger/`` (ledger.json, accepted-*.arrow), ``reports/``, ``report.json`` and the
``*/val/`` shards (earlier runs' validation counts). It then commits locally as usual and
copies its new files up, ``_ledger/ledger.json`` LAST: that PUT is the commit point in the
bucket, as the rename of ledger.json is on a disk. Every object is written by one PUT (or a
multipart upload that becomes visible only when complete), so no final key is ever partial.

Crash recovery mirrors ``Ledger.gc``: before a run, run-tagged objects of runs the bucket's
ledger does not list are deleted, and a report.json describing such a run is put back to the
last committed run's report (or removed) - a killed run is redone in full, nothing doubled.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .. import objstore
from .ledger import RUN_FILE, Ledger


def location(uri: str) -> objstore.Location | None:
    """The remote output directory, or None for a local one."""
    return objstore.filesystem(uri) if objstore.is_remote(uri) else None


def local_dir(uri: str) -> Path:
    """Where this machine keeps its working copy of a remote output directory (the lock file
    lives beside ``out``, which each run recreates)."""
    return objstore.work_dir("curate", uri)


def pull(loc: objstore.Location, out: Path) -> list[str]:
    """Fresh working copy of what a run reads, after the bucket's own crash recovery.
    Returns the objects removed from the bucket."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if objstore.exists(loc, "_ledger/ledger.json"):
        objstore.download(loc, "_ledger/ledger.json", str(out / "_ledger" / "ledger.json"))
    led = Ledger(out)  # a corrupt ledger in the bucket: one-line DataError, as locally
    done = led.committed()
    removed = []
    files = objstore.walk(loc)
    for rel in files:
        m = RUN_FILE.match(rel.rsplit("/", 1)[-1])
        if m and m.group(1) not in done:
            objstore.delete_file(loc, rel)
            removed.append(rel)
    keep = [rel for rel in files if rel not in removed]
    for rel in keep:
        top = rel.split("/", 1)[0]
        if rel == "report.json" or top == "reports" or (top == "_ledger" and rel != "_ledger/ledger.json") \
                or rel.split("/")[1:2] == ["val"]:
            objstore.download(loc, rel, str(out / rel))
    top = out / "report.json"
    if top.exists():
        try:
            stale = json.loads(top.read_text(encoding="utf-8")).get("run") not in done
        except (OSError, ValueError):
            stale = True
        if stale:  # published by a run killed before its ledger commit
            last = out / "reports" / f"{led.runs[-1]['run']}.json" if led.runs else None
            if last is not None and last.exists():
                shutil.copyfile(last, top)
                objstore.upload(str(top), loc, "report.json")
            else:
                top.unlink()
                objstore.delete_file(loc, "report.json")
            removed.append("report.json")
    return removed


def push(loc: objstore.Location, out: Path, moved: list[str]) -> None:
    """Copy a committed run's files up: outputs, then report.json, then ledger.json (commit)."""
    first = sorted(r for r in moved if r != "report.json")
    for rel in first + [r for r in moved if r == "report.json"] + ["_ledger/ledger.json"]:
        objstore.upload(str(out / rel), loc, rel)
