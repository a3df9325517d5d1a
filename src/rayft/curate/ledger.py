"""Incremental ledger under ``<output>/_ledger``: what was ingested and what was accepted.

``ledger.json`` lists committed runs and the SHA-256 of every ingested input file;
``accepted-<run>.arrow`` holds, per accepted row, its content hash, (file, line), dedup
text and MinHash signature, so a later run dedups new rows against everything already
accepted without re-reading old outputs.

Commit protocol (crash safety): a run writes every output into ``_staging/<run>/``,
moves the files into place (each file name carries the run id), and only then rewrites
``ledger.json`` atomically with the run appended. ``gc()`` at the start of every run
deletes the staging area and every run-tagged file whose run is not in the ledger, so a
run killed at any point is redone in full by the next run: no row lost, none duplicated.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather

from ..storage import atomic_write_json, fsync_dir, fsync_tree

RUN_FILE = re.compile(r"^(?:part-|accepted-)?(r\d{4,})[-.]")
RUN_ID = re.compile(r"^r\d{4,}$")
ACCEPTED_COLUMNS = ("hash", "file", "line", "dtext", "sig")  # + "split" (train/val/golden; "" in old ledgers)


@contextlib.contextmanager
def lock(out_dir: Path):
    """One curate run per output directory at a time (released by the OS on kill -9)."""
    d = Path(out_dir) / "_ledger"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".lock", "a") as f:  # "a": an unchanged rerun touches nothing
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            from ..data.formats import DataError
            raise DataError(f"another curate run holds {d / '.lock'}; wait for it to finish") from None
        yield


class Ledger:
    def __init__(self, out_dir: str | Path):
        self.out = Path(out_dir)
        self.dir = self.out / "_ledger"
        self.path = self.dir / "ledger.json"
        self.state = {"version": 1, "runs": [], "files": {}}
        if self.path.exists():
            self.state = self._read()

    def _read(self) -> dict:
        """ledger.json, or a one-line DataError naming it and what was expected."""
        from ..data.formats import DataError
        try:
            state = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
            raise DataError(f"{self.path}: corrupt ledger: expected the JSON `rayft curate` writes "
                            f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); restore it or curate "
                            "into a new output directory") from None
        ok = (isinstance(state, dict) and isinstance(state.get("runs"), list) and isinstance(state.get("files"), dict)
              and all(isinstance(r, dict) and isinstance(r.get("run"), str) and RUN_ID.match(r["run"])
                      for r in state["runs"]))
        if not ok:
            raise DataError(f"{self.path}: corrupt ledger: expected {{\"runs\": [{{\"run\": \"r0001\", ...}}], "
                            "\"files\": {sha256: {...}}}; restore it or curate into a new output directory")
        return state

    # ------------------------------------------------------------------ queries
    @property
    def runs(self) -> list[dict]:
        return self.state["runs"]

    def committed(self) -> set[str]:
        return {r["run"] for r in self.runs}

    def next_run_id(self) -> str:
        return f"r{len(self.runs) + 1:04d}"

    def has_file(self, digest: str) -> bool:
        return digest in self.state["files"]

    def staging(self, run_id: str) -> Path:
        return self.out / "_staging" / run_id

    def accepted(self, params: dict, signer: Callable[[list[str]], pa.Array]) -> pa.Table:
        """Every previously accepted row (hash, file, line, dtext, sig, split) in commit order.

        Signatures of runs made with other MinHash parameters (``params``: ngram, bands,
        rows, seed) are recomputed from the stored dedup text with ``signer``.
        """
        parts = []
        for r in self.runs:
            p = self.dir / f"accepted-{r['run']}.arrow"
            if not p.exists():
                continue
            t = feather.read_table(p)
            split = t["split"] if "split" in t.column_names else pa.array([""] * t.num_rows, pa.string())
            t = t.select(list(ACCEPTED_COLUMNS)).append_column("split", split)
            if r.get("minhash") != params:
                t = t.set_column(t.column_names.index("sig"), "sig", signer(t["dtext"].to_pylist()))
            parts.append(t)
        if not parts:
            return pa.table({"hash": pa.array([], pa.string()), "file": pa.array([], pa.string()),
                             "line": pa.array([], pa.int64()), "dtext": pa.array([], pa.string()),
                             "sig": signer([]), "split": pa.array([], pa.string())})
        return pa.concat_tables(parts)

    def accepted_embeddings(self, model: str) -> np.ndarray | None:
        """Embeddings of previously accepted rows by ``model``; None when some run has none
        (embedding dedup then compares within the new rows only)."""
        embs = []
        for r in self.runs:
            p = self.dir / f"accepted-{r['run']}.arrow"
            if not p.exists():
                continue
            t = feather.read_table(p)
            if not t.num_rows:
                continue
            if "emb" not in t.column_names or r.get("embed_model") != model:
                return None
            embs.append(np.asarray(t["emb"].combine_chunks().flatten()).reshape(t.num_rows, -1))
        return np.concatenate(embs) if embs else None

    # ------------------------------------------------------------------ crash recovery
    def gc(self) -> list[str]:
        """Delete staging and outputs of runs that never committed; returns what was removed."""
        removed = []
        staging = self.out / "_staging"
        if staging.exists():
            shutil.rmtree(staging)
            removed.append(str(staging))
        done = self.committed()
        for p in self.out.rglob("*"):
            m = RUN_FILE.match(p.name)
            if p.is_file() and m and m.group(1) not in done:
                p.unlink()
                removed.append(str(p))
        # report.json is published before the ledger commit: after a kill in between it
        # describes a run that never committed. Put back the last committed run's report.
        top = self.out / "report.json"
        try:
            stale = top.exists() and json.loads(top.read_text(encoding="utf-8")).get("run") not in done
        except (OSError, ValueError):
            stale = True
        if stale:
            last = self.out / "reports" / f"{self.runs[-1]['run']}.json" if self.runs else None
            try:
                atomic_write_json(top, json.loads(last.read_text(encoding="utf-8")))
            except (AttributeError, OSError, ValueError):  # no committed run or its report is gone
                top.unlink(missing_ok=True)
            removed.append(str(top))
        return removed

    # ------------------------------------------------------------------ commit
    def publish(self, run_id: str) -> list[str]:
        """Move ``_staging/<run>/**`` into the output tree (same filesystem: atomic renames)."""
        src = self.staging(run_id)
        fsync_tree(src)  # shards, rejects, reports, accepted-*.arrow durable before they move
        moved, dirs = [], set()
        for p in sorted(src.rglob("*")):
            if p.is_file():
                dst = self.out / p.relative_to(src)
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(p, dst)
                moved.append(str(dst.relative_to(self.out)))
                dirs.update(d for d in [dst.parent, *dst.parent.parents] if d == self.out or self.out in d.parents)
        for d in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
            fsync_dir(d)  # the renames themselves, before commit() makes the run visible
        shutil.rmtree(self.out / "_staging", ignore_errors=True)
        return moved

    def commit(self, run_id: str, files: dict[str, dict], summary: dict) -> None:
        """Append the run; the atomic rename of ledger.json is the commit point."""
        state = json.loads(json.dumps(self.state))
        for digest, info in files.items():
            state["files"][digest] = dict(info, run=run_id)
        state["runs"].append({"run": run_id, "committed_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **summary})
        atomic_write_json(self.path, state)
        self.state = state


def write_accepted(path: Path, table: pa.Table, emb: np.ndarray | None = None) -> None:
    if emb is not None:
        d = emb.shape[1] if emb.ndim == 2 else 0
        table = table.append_column("emb", pa.FixedSizeListArray.from_arrays(
            pa.array(emb.astype(np.float32).ravel(), pa.float32()), d))
    path.parent.mkdir(parents=True, exist_ok=True)
    feather.write_feather(table, str(path), compression="zstd")
