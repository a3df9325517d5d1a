"""``output.dir`` on an object store (``s3://bucket/prefix``, any ``pyarrow.fs`` URI).

The bucket holds the same layout as a local output directory (``rayft.curate.config``). A run
works in a fresh local copy (``$RAYFT_CACHE/curate/<digest of the URI>/out``) holding what it
reads: ``_ledger/`` (ledger.json, accepted-*.arrow), ``reports/``, ``report.json`` and the
``*/val/`` shards (earlier runs' validation counts). It then commits locally as usual and
copies its new files up, ``_ledger/ledger.json`` LAST: that PUT is the commit point in the
bucket, as the rename of ledger.json is on a disk. Every object is written by one PUT (or a
multipart upload that becomes visible only when complete), so no final key is ever partial.

One run per output prefix across machines: ``bucket_lock`` holds ``_ledger/lock.json``, created
with an S3 conditional PUT (``If-None-Match: *``) and deleted when the run ends.

Crash recovery mirrors ``Ledger.gc``: before a run, run-tagged objects of runs the bucket's
ledger does not list are deleted, and a report.json describing such a run is put back to the
last committed run's report (or removed) - a killed run is redone in full, nothing doubled.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import socket
import time
from pathlib import Path

from .. import objstore
from .ledger import RUN_FILE, Ledger


LEDGER, LOCK = "_ledger/ledger.json", "_ledger/lock.json"


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def bucket_lock(uri: str):
    """Hold ``_ledger/lock.json`` in the bucket for the run: created only if absent (S3
    conditional PUT, registry.fs.Store.write_if), deleted at the end. A lock left by a killed
    run on this host (its pid gone; the local flock is already held) is taken over; one held
    by a live run, or from another host, is one DataError line naming the object. Stores
    without conditional writes (or without boto3) run without it, as before."""
    from ..data.formats import DataError
    from ..registry.fs import Store

    st = Store(uri)
    if not st.cas or importlib.util.find_spec("boto3") is None:
        yield
        return
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for _ in range(3):
        if st.write_if(LOCK, json.dumps(me).encode(), None):
            break
        data, _tag = st.read_tagged(LOCK)
        try:
            holder = json.loads(data) if data else {}
        except ValueError:
            holder = {}
        if data is not None and not (holder.get("host") == me["host"] and not _alive(holder.get("pid"))):
            raise DataError(f"another curate run holds {objstore.shown(uri)}/{LOCK} (host {holder.get('host')}, "
                            f"pid {holder.get('pid')}, since {holder.get('since')}); wait for it to finish, or "
                            "delete that object if that run is gone")
        if data is not None:
            st.delete_file(LOCK)  # its run was killed on this host
    else:
        raise DataError(f"could not take {objstore.shown(uri)}/{LOCK}: other runs keep taking it")
    try:
        yield
    finally:
        st.delete_file(LOCK)


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
    if objstore.exists(loc, LEDGER):
        objstore.download(loc, LEDGER, str(out / LEDGER))
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
        if rel == "report.json" or top == "reports" or (top == "_ledger" and rel not in (LEDGER, LOCK)) \
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
    for rel in first + [r for r in moved if r == "report.json"] + [LEDGER]:
        objstore.upload(str(out / rel), loc, rel)
