"""Storage for the registry through ``pyarrow.fs``: a local path or any filesystem URI.

``Store`` wraps one filesystem and a root path. Local paths and ``file://`` URIs use
``LocalFileSystem``; ``s3://``, ``gs://``, ``hdfs://`` ... use whatever pyarrow builds for
the URI (credentials from the environment, as pyarrow does).

Atomicity: ``write_atomic`` writes a temp file and renames it on local disks; on object
stores a single PUT is already atomic (readers see the old or the new object, never a
torn one), so it writes the key directly.
"""
from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pyarrow.fs as pafs

CHUNK = 1 << 20


class Store:
    """Files under one root on one pyarrow filesystem. Paths are '/'-joined, relative to root."""

    def __init__(self, uri: str):
        if "://" in uri:
            self.fs, root = pafs.FileSystem.from_uri(uri)
        else:
            self.fs, root = pafs.LocalFileSystem(), str(Path(os.path.expanduser(uri)).resolve())
        self.uri = uri
        self.root = root.rstrip("/")
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def is_dir(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type == pafs.FileType.Directory

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def write_atomic(self, rel: str, data: bytes) -> None:
        """Replace ``rel`` with ``data`` so that readers never see a partial file."""
        dest = self.path(rel)
        self.fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
        if not self.local:
            with self.fs.open_output_stream(dest) as f:
                f.write(data)
            return
        tmp = f"{dest}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
            from ..storage import fsync_dir
            fsync_dir(os.path.dirname(dest))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def fsync_dir(self, rel: str) -> None:
        """Make renames inside ``rel`` durable (local disks; object stores need nothing)."""
        if self.local:
            from ..storage import fsync_dir
            fsync_dir(self.path(rel))

    def fsync_tree(self, rel: str) -> None:
        """fsync every file and directory under ``rel`` (local disks)."""
        if self.local:
            from ..storage import fsync_tree
            fsync_tree(self.path(rel))

    def list_dir(self, rel: str) -> list[str]:
        """Names directly under ``rel`` (empty if it does not exist)."""
        sel = pafs.FileSelector(self.path(rel), allow_not_found=True, recursive=False)
        return sorted(i.base_name for i in self.fs.get_file_info(sel))

    def delete_dir(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.delete_dir(self.path(rel))

    def delete_file(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.delete_file(self.path(rel))

    def upload(self, local: Path, rel: str) -> str:
        """Copy a local file to ``rel``; returns the sha256 of the bytes written."""
        h = hashlib.sha256()
        dest = self.path(rel)
        self.fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
        with open(local, "rb") as src, self.fs.open_output_stream(dest) as out:
            while chunk := src.read(CHUNK):
                h.update(chunk)
                out.write(chunk)
        if self.local:  # durable before the manifest that names it is written
            fd = os.open(dest, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return h.hexdigest()

    def download(self, rel: str, local: Path) -> str:
        """Copy ``rel`` to a local file; returns the sha256 of the bytes read."""
        h = hashlib.sha256()
        local.parent.mkdir(parents=True, exist_ok=True)
        with self.fs.open_input_stream(self.path(rel)) as src, open(local, "wb") as out:
            while chunk := src.read(CHUNK):
                h.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        return h.hexdigest()

    def sha256(self, rel: str) -> str:
        h = hashlib.sha256()
        with self.fs.open_input_stream(self.path(rel)) as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
