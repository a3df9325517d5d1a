"""Storage for the registry through ``pyarrow.fs``: a local path or any filesystem URI.

``Store`` wraps one filesystem and a root path. Local paths and ``file://`` URIs use
``LocalFileSystem``; ``s3://``, ``gs://``, ``hdfs://`` ... use whatever pyarrow builds for
the URI (credentials from the environment, as pyarrow does).

Atomicity: ``write_atomic`` writes a temp file and renames it on local disks; on object
stores a single PUT is already atomic (readers see the old or the new object, never a
torn one), so it writes the key directly.

Concurrent writers: local registries serialize them with ``flock``. S3 has no lock and no
rename, so on ``s3://`` the registry uses S3 conditional writes (``read_tagged`` /
``write_if``): ``If-None-Match: *`` creates an object only if it does not exist (version
claims and manifests), ``If-Match: <etag>`` replaces the alias file only if nobody changed it
since it was read (compare-and-swap). pyarrow.fs cannot send those headers, so these two
calls go through boto3 (the ``s3`` extra), configured from the same URI and environment.
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
        #: conditional writes available (S3): see ``read_tagged`` / ``write_if``
        self.cas = isinstance(self.fs, getattr(pafs, "S3FileSystem", ()))
        self._s3 = None

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


    # -- conditional writes (S3) ---------------------------------------------------------
    def _client(self):
        if self._s3 is None:
            self._s3 = s3_client(self.uri)
        return self._s3

    def _bucket_key(self, rel: str) -> tuple[str, str]:
        bucket, _, key = self.path(rel).partition("/")
        return bucket, key

    def read_tagged(self, rel: str) -> tuple[bytes | None, str | None]:
        """(content, ETag) of ``rel`` from ONE GET, so a later ``write_if`` compares against
        exactly what was read; (None, None) when it does not exist."""
        from botocore.exceptions import ClientError
        bucket, key = self._bucket_key(rel)
        try:
            r = self._client().get_object(Bucket=bucket, Key=key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None, None
            raise OSError(f"{self.path(rel)}: {_s3_error(e)}") from None
        return r["Body"].read(), r["ETag"]

    def write_if(self, rel: str, data: bytes, etag: str | None) -> bool:
        """PUT ``rel`` only if it is unchanged since it was read with ``etag`` (``If-Match``),
        or, with ``etag=None``, only if it does not exist (``If-None-Match: *``). False when
        another writer got there first (HTTP 412, or 409 for a conflicting concurrent PUT)."""
        from botocore.exceptions import ClientError
        bucket, key = self._bucket_key(rel)
        cond = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            self._client().put_object(Bucket=bucket, Key=key, Body=data, **cond)
        except ClientError as e:
            err = e.response.get("Error", {})
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if err.get("Code") in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return False
            raise OSError(f"{self.path(rel)}: {_s3_error(e)}") from None
        return True


def _s3_error(e) -> str:
    err = e.response.get("Error", {})
    return f"{err.get('Code', 'error')}: {err.get('Message', '')}".strip()


def s3_client(uri: str):
    """A boto3 S3 client for ``uri`` (``s3://[key:secret@]bucket/prefix?endpoint_override=...&
    scheme=http&region=...``, pyarrow's spelling), the rest from the usual AWS environment
    (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, profiles)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        from .lineage import RegistryError
        raise RegistryError("an s3:// registry needs boto3 for its conditional (compare-and-swap) alias "
                            "writes: pip install 'rayft[s3]'") from None
    from ..objstore import s3_settings

    st = s3_settings(uri)
    kw: dict = {}
    if st["endpoint"]:
        kw["endpoint_url"] = f"{st['scheme'] or 'https'}://{st['endpoint']}"
    if st["region"]:
        kw["region_name"] = st["region"]
    if st["access_key"]:
        kw.update(aws_access_key_id=st["access_key"], aws_secret_access_key=st["secret_key"],
                  aws_session_token=st["session_token"])
    return boto3.client("s3", config=Config(retries={"max_attempts": 3, "mode": "standard"}), **kw)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
