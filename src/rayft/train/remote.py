"""``run.dir`` on an object store (``s3://bucket/prefix``, any ``pyarrow.fs`` URI).

The run lives at ``<run.dir>/<run.name>/`` in the bucket:

* ``checkpoints/step_*/`` are written there by Ray Train itself (``RunConfig(storage_path=
  bucket/prefix/name, storage_filesystem=<pyarrow S3FileSystem>)``), so a rerun on any machine
  resumes from them (Ray Train restores the run's latest checkpoint from storage);
* everything else (metrics.jsonl, report.json, adapter/ or model/, tokenizer/, loss.png,
  config.yaml, rejects.jsonl) is made in a local staging directory on the driver
  (``$RAYFT_CACHE/runs/<hash of run.dir>/<run.name>``) and copied up when the run ends
  (report.json last: its presence in the bucket means the rest is there). A failed run's
  report.json is copied up too.

The driver mirrors the newest checkpoint from the bucket into the staging directory when a
run starts (the resume step) and after training (what is published), so the rest of the
recipe reads local files as for a local ``run.dir``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from .. import objstore
from ..config import uri_scheme

STATE = "state.json"
#: staging entries never copied up: checkpoints (Ray Train wrote them there), pid files, swap
NOT_PUBLISHED = {"checkpoints", "workers", "nvme_swap", "report.json"}
#: staging files a rerun continues (fetched from the bucket when the staging copy lacks them)
RESUMED_FILES = ("metrics.jsonl",)


def location(cfg) -> objstore.Location | None:
    """The run's remote directory, or None for a local ``run.dir``."""
    if not objstore.is_remote(cfg.run.dir):
        return None
    return objstore.filesystem(cfg.run.dir).child(cfg.run.name)


def local_run_dir(cfg) -> Path:
    """Where the driver keeps the run: ``run.dir/run.name`` for a local run.dir (``file://``
    included), the staging directory for a remote one."""
    d = cfg.run.dir
    if uri_scheme(d) == "file":
        return Path(objstore.filesystem(d).path) / cfg.run.name
    if objstore.is_remote(d):
        from ..models.load import cache_dir
        key = hashlib.sha256(d.encode()).hexdigest()[:12]  # a digest: the URI may carry keys
        return cache_dir() / "runs" / key / cfg.run.name
    return Path(os.path.expanduser(d)) / cfg.run.name


def storage(cfg, run_dir: Path) -> dict:
    """RunConfig keyword arguments: where Ray Train writes the checkpoints."""
    loc = location(cfg)
    if loc is None:
        return {"storage_path": str(Path(run_dir).resolve())}
    return {"storage_path": loc.path, "storage_filesystem": loc.fs}


def latest_remote_checkpoint(loc: objstore.Location) -> str | None:
    """Name of the newest ``checkpoints/step_*`` in the bucket that holds a state.json."""
    for name in reversed(objstore.list_dir(loc, "checkpoints")):
        if name.startswith("step_") and objstore.exists(loc, f"checkpoints/{name}/{STATE}"):
            return name
    return None


def pull(cfg, run_dir: Path, overwrite: bool = False) -> str | None:
    """Remote run.dir: (with ``overwrite``, delete the run in the bucket first, as run.overwrite
    does locally) mirror the newest checkpoint into ``run_dir/checkpoints/`` (older mirrors
    removed). Returns the checkpoint's name, None when there is none or run.dir is local."""
    loc = location(cfg)
    if loc is None:
        return None
    if overwrite:
        objstore.delete_dir(loc)
    # a rerun on another machine (or with a cleared cache): the metrics so far come from the
    # bucket (rows after the resumed checkpoint are dropped by the workers, as locally)
    for keep in RESUMED_FILES:
        if not (Path(run_dir) / keep).exists() and objstore.exists(loc, keep):
            objstore.download(loc, keep, str(Path(run_dir) / keep))
    name = latest_remote_checkpoint(loc)
    local = Path(run_dir) / "checkpoints"
    if local.exists():
        shutil.rmtree(local)
    if name is None:
        return None
    part = local / f".{name}.part"
    objstore.download(loc, f"checkpoints/{name}", str(part))
    os.replace(part, local / name)
    return name


def push(cfg, run_dir: Path) -> str | None:
    """Remote run.dir: copy the staging directory up (report.json last, with its paths naming
    the bucket). Returns the run's URI for output (no keys), None when run.dir is local."""
    loc = location(cfg)
    if loc is None:
        return None
    run_dir = Path(run_dir)
    for entry in sorted(run_dir.iterdir()):
        if entry.name not in NOT_PUBLISHED and not entry.name.startswith("."):
            objstore.upload(str(entry), loc, entry.name)
    rep = run_dir / "report.json"
    if rep.exists():
        from ..storage import atomic_write_json
        report = json.loads(rep.read_text(encoding="utf-8"))
        ck = latest_remote_checkpoint(loc)
        report.update(run_dir=loc.shown, staging_dir=str(run_dir))
        for key in ("checkpoint", "last_checkpoint"):
            if key in report:
                report[key] = f"{loc.shown}/checkpoints/{ck}" if ck else None
        atomic_write_json(rep, report)
        objstore.upload(str(rep), loc, "report.json")
    return loc.shown
