"""Driver-side writer for `rayft frames embed`: streamed result batches -> one directory of
Parquet parts per episode, and the episode's completion marker the moment it is whole."""
from __future__ import annotations

import hashlib
import os
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..storage import mark_done

EMB_SCHEMA_FIELDS = [("path", pa.string()), ("episode", pa.string()), ("frame_index", pa.int32()),
                     ("width", pa.int32()), ("height", pa.int32())]


def episode_id(name: str) -> str:
    """Filesystem-safe, collision-free directory/marker name for an episode."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "root"
    return f"{safe[:80]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


class EpisodeWriter:
    """Buffers streamed rows per episode; writes Parquet parts and the completion marker."""

    def __init__(self, out: Path, expected: dict[str, int], rows_per_file: int):
        self.out, self.expected, self.rows_per_file = out, expected, rows_per_file
        self.buf: dict[str, list[dict]] = {}
        self.got = Counter()
        self.parts = Counter()
        self.embedded = Counter()
        self.rejects: dict[str, list[dict]] = {}
        self.converted: dict[str, Counter] = {}
        self.finished: list[str] = []
        self.failed: dict[str, str] = {}

    def add(self, batch: dict) -> int:
        eps = np.asarray(batch["episode"], dtype=object)
        for ep in dict.fromkeys(eps.tolist()):  # episodes in arrival order
            if ep in self.failed:
                continue
            try:
                self._add_episode(ep, eps, batch)
            except Exception as ex:  # noqa: BLE001 - e.g. an unwritable output: this episode only
                self.failed[ep] = f"{type(ex).__name__}: {ex}"
                self.buf.pop(ep, None)
                print(f"frames embed: episode {ep} failed: {self.failed[ep]}", file=sys.stderr)
        return len(eps)

    def _add_episode(self, ep: str, eps: np.ndarray, batch: dict) -> None:
        """Account for this episode's rows of ``batch``; flush/finish when due."""
        m = eps == ep
        rej = np.asarray(batch["reject"], dtype=object)[m]
        conv = np.asarray(batch["converted"], dtype=object)[m]
        paths = np.asarray(batch["path"], dtype=object)[m]
        ok = np.array([not r for r in rej], dtype=bool)
        for p, r in zip(paths[~ok], rej[~ok]):
            self.rejects.setdefault(ep, []).append({"path": p, "episode": ep, "reason": r})
        self.converted.setdefault(ep, Counter()).update(c for c in conv[ok] if c)
        if ok.any():
            self.buf.setdefault(ep, []).append({
                "path": paths[ok], "episode": eps[m][ok],
                "frame_index": np.asarray(batch["frame_index"])[m][ok],
                "width": np.asarray(batch["width"])[m][ok], "height": np.asarray(batch["height"])[m][ok],
                "embedding": np.asarray(batch["embedding"])[m][ok]})
            self.embedded[ep] += int(ok.sum())
        self.got[ep] += int(m.sum())
        if sum(len(b["path"]) for b in self.buf.get(ep, [])) >= self.rows_per_file:
            self._flush(ep)
        if self.got[ep] >= self.expected[ep]:
            self._finish(ep)

    def _flush(self, ep: str) -> None:
        chunks = self.buf.pop(ep, [])
        if not chunks:
            return
        cols = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        emb = cols.pop("embedding").astype(np.float32)
        d = emb.shape[1]
        arrays = [pa.array(cols[k].tolist() if t == pa.string() else cols[k], type=t) for k, t in EMB_SCHEMA_FIELDS]
        offsets = pa.array(np.arange(0, (len(emb) + 1) * d, d, dtype=np.int32))
        arrays.append(pa.ListArray.from_arrays(offsets, pa.array(emb.ravel())))
        table = pa.Table.from_arrays(arrays, names=[k for k, _ in EMB_SCHEMA_FIELDS] + ["embedding"])
        path = self.out / "embeddings" / episode_id(ep) / f"part-{self.parts[ep]:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name("." + path.name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        self.parts[ep] += 1

    def _finish(self, ep: str) -> None:
        self._flush(ep)
        rej = self.rejects.get(ep, [])
        mark_done(self.out / "_done", episode_id(ep) + ".json", {
            "episode": ep, "files": self.expected[ep], "embedded": self.embedded[ep], "rejected": len(rej),
            "converted": dict(self.converted.get(ep, {})), "rejects": rej, "parts": self.parts[ep]})
        self.finished.append(ep)
