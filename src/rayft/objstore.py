"""Locations that are not a local disk: ``pyarrow.fs`` URIs such as ``s3://bucket/prefix``.

The URI is pyarrow's spelling (``s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http
&region=...``); what it does not say comes from the usual AWS environment (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_DEFAULT_REGION / AWS_REGION,
then the SDK's own chain: profiles, instance roles).

``filesystem(uri)`` builds the ``pyarrow.fs`` filesystem with the endpoint and any credentials
found on THIS machine written into it, so the object can be handed to Ray (Ray Train's
``storage_filesystem`` is pickled to the controller and the workers, whose environment may not
carry the variables). Whole trees move with ``pyarrow.fs.copy_files``.

Secrets are never shown: ``shown(uri)`` drops ``user:password@`` and the query string.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pyarrow.fs as pafs

from .config import public_uri as public  # noqa: F401  (objstore.public: re-exported)
from .config import shown_uri as shown  # noqa: F401
from .config import uri_scheme


def is_remote(location: str) -> bool:
    """A ``scheme://`` location other than ``file://`` (plain paths and file:// are local)."""
    return uri_scheme(location) not in (None, "file")


def _query(uri: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlsplit(uri).query).items()}


@dataclass(frozen=True)
class Location:
    """One remote directory: its filesystem, the path inside it (``bucket/prefix``) and the
    URI it came from (``shown`` for output)."""
    fs: pafs.FileSystem
    path: str
    uri: str

    @property
    def shown(self) -> str:
        return shown(self.uri)

    def child(self, name: str) -> "Location":
        scheme, _, rest = self.uri.partition("://")
        base, q, query = rest.partition("?")
        return Location(self.fs, f"{self.path}/{name}", f"{scheme}://{base.rstrip('/')}/{name}{q}{query}")


def s3_settings(uri: str) -> dict:
    """Endpoint, scheme, region and credentials of an ``s3://`` URI: the URI first, then the AWS
    environment. Keys (None when unknown): endpoint (host[:port]), scheme, region, access_key,
    secret_key, session_token. What ``filesystem`` (pyarrow) and the registry's boto3 client
    (conditional writes) are both built from."""
    u = urlsplit(uri)
    q = _query(uri)
    scheme = None
    ep = q.get("endpoint_override") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if ep:
        if "://" in ep:
            scheme, _, ep = ep.partition("://")
        ep = ep.rstrip("/")
    key = q.get("access_key") or (unquote(u.username) if u.username else None) or os.environ.get("AWS_ACCESS_KEY_ID")
    secret = (q.get("secret_key") or (unquote(u.password) if u.password else None)
              or os.environ.get("AWS_SECRET_ACCESS_KEY"))
    ok = bool(key and secret)
    return {"endpoint": ep or None, "scheme": q.get("scheme") or scheme,
            "region": q.get("region") or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION"),
            "access_key": key if ok else None, "secret_key": secret if ok else None,
            "session_token": (q.get("session_token") or os.environ.get("AWS_SESSION_TOKEN") or None) if ok else None}


def env_of(uri: str) -> dict[str, str]:
    """The AWS_* variables (credentials, region) this machine resolves for ``uri``, for a Ray
    process that builds the filesystem itself from the URI (a Tune trial) while its node's
    environment may not carry them. {} for anything but s3://."""
    if urlsplit(uri).scheme.lower() != "s3":
        return {}
    st = s3_settings(uri)
    env = {"AWS_ACCESS_KEY_ID": st["access_key"], "AWS_SECRET_ACCESS_KEY": st["secret_key"],
           "AWS_SESSION_TOKEN": st["session_token"], "AWS_DEFAULT_REGION": st["region"]}
    return {k: v for k, v in env.items() if v}


def filesystem(uri: str) -> Location:
    """The pyarrow filesystem and path of ``uri``. For ``s3://`` the endpoint, region and
    credentials (``s3_settings``: URI first, then the environment) are written into the
    filesystem object."""
    u = urlsplit(uri)
    if u.scheme.lower() != "s3":
        fs, path = pafs.FileSystem.from_uri(uri)
        return Location(fs, path.rstrip("/"), uri)
    st = s3_settings(uri)
    kw: dict = {}
    if st["endpoint"]:
        kw["endpoint_override"] = st["endpoint"]
    if st["scheme"]:
        kw["scheme"] = st["scheme"]
    if st["region"]:
        kw["region"] = st["region"]
    if st["access_key"]:
        kw.update(access_key=st["access_key"], secret_key=st["secret_key"], session_token=st["session_token"])
    host = u.hostname or ""
    return Location(pafs.S3FileSystem(**kw), f"{host}{u.path}".rstrip("/"), uri)


def exists(loc: Location, rel: str = "") -> bool:
    p = f"{loc.path}/{rel}" if rel else loc.path
    return loc.fs.get_file_info(p).type != pafs.FileType.NotFound


def list_dir(loc: Location, rel: str = "") -> list[str]:
    p = f"{loc.path}/{rel}" if rel else loc.path
    sel = pafs.FileSelector(p, allow_not_found=True, recursive=False)
    return sorted(i.base_name for i in loc.fs.get_file_info(sel))


def download(loc: Location, rel: str, local: str) -> None:
    """Copy the remote file or tree ``rel`` to the local path ``local``."""
    src = f"{loc.path}/{rel}" if rel else loc.path
    info = loc.fs.get_file_info(src)
    os.makedirs(local if info.type == pafs.FileType.Directory else os.path.dirname(local) or ".", exist_ok=True)
    pafs.copy_files(src, local, source_filesystem=loc.fs, destination_filesystem=pafs.LocalFileSystem())


def upload(local: str, loc: Location, rel: str) -> None:
    """Copy the local file or tree ``local`` to ``rel`` (a single PUT per file: readers see a
    whole object or none)."""
    pafs.copy_files(local, f"{loc.path}/{rel}", source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=loc.fs)


def delete_dir(loc: Location, rel: str = "") -> None:
    p = f"{loc.path}/{rel}" if rel else loc.path
    if loc.fs.get_file_info(p).type == pafs.FileType.Directory:
        loc.fs.delete_dir(p)


def walk(loc: Location, rel: str = "") -> list[str]:
    """Every file under ``rel`` (recursively), as paths relative to ``loc``; [] when absent."""
    p = f"{loc.path}/{rel}" if rel else loc.path
    sel = pafs.FileSelector(p, allow_not_found=True, recursive=True)
    return sorted(i.path[len(loc.path) + 1:] for i in loc.fs.get_file_info(sel) if i.type == pafs.FileType.File)


def delete_file(loc: Location, rel: str) -> None:
    loc.fs.delete_file(f"{loc.path}/{rel}")


def work_dir(kind: str, uri: str) -> Path:
    """This machine's working copy of remote location ``uri`` for stage ``kind``:
    ``$RAYFT_CACHE/<kind>/<digest of the URI>`` (a digest: the URI may carry keys)."""
    from .models.load import cache_dir
    return cache_dir() / kind / hashlib.sha256(uri.encode()).hexdigest()[:12]
