"""A versioned model registry on the run storage, with aliases moved atomically.

Layout under the registry root (a local path or a pyarrow filesystem URI)::

    <name>/                           one model line, e.g. "default", "en", "zh"
      aliases.json                    {"champion", "previous", "history"}: ONE atomic write
      versions/v{unix_ts}_{hash4}/
        artifacts/adapter/...         safetensors + json/text only (never pickles)
        artifacts/tokenizer/...
        manifest.json                 lineage + artifact sha256s; written LAST, so a version
                                      exists exactly when its manifest does
      events/<ns>-<action>.json       audit trail of registrations and alias moves

Versions are immutable. ``champion`` is what serving hosts; ``previous`` is what
``rollback`` returns to. ``history`` is the sequence of champions, so repeated rollbacks
walk back through it. Every operation that moves an alias first re-hashes the target's
artifacts; a mismatch raises ``IntegrityError`` and leaves the aliases untouched.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from pathlib import Path

from .fs import Store
from .lineage import ALIASES, RegistryError, build_manifest, collect_artifacts

VERSION_RE = re.compile(r"^v\d{9,}_[0-9a-f]{4}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class IntegrityError(RegistryError):
    """A version's artifacts do not match the sha256 recorded when it was registered."""


class Registry:
    """One model line (``name``) inside the registry at ``uri``."""

    def __init__(self, uri: str, name: str = "default", cache_dir: str | Path | None = None):
        if not uri:
            raise RegistryError("registry uri is empty: set registry.uri (a local path or e.g. s3://bucket/registry)")
        if not NAME_RE.match(name):
            raise RegistryError(f"registry name {name!r}: use letters, digits, '_', '.', '-'")
        self.store = Store(uri)
        self.uri, self.name = uri, name
        from ..models.load import cache_dir as rayft_cache
        self.cache = Path(cache_dir) if cache_dir else rayft_cache() / "registry"

    # -- reading -------------------------------------------------------------------------
    def _vdir(self, version: str) -> str:
        return f"{self.name}/versions/{version}"

    def aliases(self) -> dict:
        rel = f"{self.name}/aliases.json"
        if not self.store.exists(rel):
            return {"champion": None, "previous": None, "history": []}
        return json.loads(self.store.read_bytes(rel))

    def versions(self) -> list[dict]:
        """Manifests of every complete version, oldest first."""
        out = []
        for v in self.store.list_dir(f"{self.name}/versions"):
            if VERSION_RE.match(v) and self.store.exists(f"{self._vdir(v)}/manifest.json"):
                out.append(json.loads(self.store.read_bytes(f"{self._vdir(v)}/manifest.json")))
        return sorted(out, key=lambda m: (m["created"], m["version"]))

    def resolve(self, ref: str) -> str:
        """An alias or version id -> a version id that exists; RegistryError otherwise."""
        ref = (ref or "").strip()
        if ref in ALIASES:
            v = self.aliases().get(ref)
            if not v:
                raise RegistryError(f"registry {self.name!r}: alias {ref!r} is not set "
                                    f"(promote a version first: rayft registry promote version=...)")
            return v
        if not VERSION_RE.match(ref):
            raise RegistryError(f"registry {self.name!r}: {ref!r} is neither an alias ({', '.join(ALIASES)}) "
                                "nor a version id like v1763856000_ab12")
        if not self.store.exists(f"{self._vdir(ref)}/manifest.json"):
            known = [m["version"] for m in self.versions()][-5:]
            raise RegistryError(f"registry {self.name!r}: unknown version {ref!r}; latest versions: "
                                f"{', '.join(known) or '(none)'}")
        return ref

    def get(self, ref: str) -> dict:
        """The manifest of an alias or version id."""
        v = self.resolve(ref)
        return json.loads(self.store.read_bytes(f"{self._vdir(v)}/manifest.json"))

    # -- integrity -----------------------------------------------------------------------
    def verify(self, ref: str) -> dict:
        """Re-hash every artifact of a version in the registry; IntegrityError on mismatch."""
        m = self.get(ref)
        base = f"{self._vdir(m['version'])}/artifacts"
        present = set()
        for sub in self._walk(base):
            present.add(sub)
        for rel, meta in m["artifacts"].items():
            if rel not in present:
                raise IntegrityError(f"{self.name}/{m['version']}: artifact {rel} is missing")
            got = self.store.sha256(f"{base}/{rel}")
            if got != meta["sha256"]:
                raise IntegrityError(f"{self.name}/{m['version']}: artifact {rel} has sha256 {got[:12]}..., "
                                     f"registered {meta['sha256'][:12]}...; refusing to use a tampered or "
                                     "corrupted artifact")
        extra = present - set(m["artifacts"])
        if extra:
            raise IntegrityError(f"{self.name}/{m['version']}: unregistered files in artifacts: {sorted(extra)}")
        return m

    def _walk(self, rel: str) -> list[str]:
        import pyarrow.fs as pafs
        sel = pafs.FileSelector(self.store.path(rel), allow_not_found=True, recursive=True)
        root = self.store.path(rel) + "/"
        return [i.path[len(root):] for i in self.store.fs.get_file_info(sel) if i.type == pafs.FileType.File]

    def fetch(self, ref: str) -> tuple[dict, Path]:
        """(manifest, local directory holding the verified artifacts) for loading a model.

        Local registries are verified and used in place; remote ones are downloaded into
        the rayft cache, hashing the bytes as they arrive.
        """
        m = self.get(ref)
        if self.store.local:
            self.verify(m["version"])
            return m, Path(self.store.path(f"{self._vdir(m['version'])}/artifacts"))
        import hashlib
        key = hashlib.sha256(self.uri.encode()).hexdigest()[:12]
        dest = self.cache / key / self.name / m["version"]
        for rel, meta in m["artifacts"].items():
            got = self.store.download(f"{self._vdir(m['version'])}/artifacts/{rel}", dest / rel)
            if got != meta["sha256"]:
                raise IntegrityError(f"{self.name}/{m['version']}: downloaded {rel} has sha256 {got[:12]}..., "
                                     f"registered {meta['sha256'][:12]}...")
        return m, dest

    # -- writing -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self):
        """Serialize writers on local disks (flock). Object stores: last writer wins."""
        if not self.store.local:
            yield
            return
        import fcntl
        p = Path(self.store.path(f"{self.name}/.lock"))
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _event(self, action: str, **info) -> None:
        ev = {"action": action, "time": time.time(), "command": " ".join(sys.argv), **info}
        self.store.write_atomic(f"{self.name}/events/{time.time_ns()}-{action}.json",
                                json.dumps(ev, indent=2, default=str).encode())

    def _write_aliases(self, a: dict) -> None:
        self.store.write_atomic(f"{self.name}/aliases.json", json.dumps(a, indent=2).encode())

    def register(self, run_dir: str | Path, eval_report: dict | None = None, parent: str | None = None) -> dict:
        """Add a finished training run as a new immutable version; returns its manifest.

        Registering the same artifacts with the same evaluation again returns the existing
        version instead of a duplicate.
        """
        run_dir = Path(os.path.expanduser(str(run_dir)))
        files = collect_artifacts(run_dir)
        with self._lock():
            existing = self.versions()
            m = build_manifest(run_dir, files, eval_report, parent, self.name,
                               taken={x["version"] for x in existing})
            for old in existing:
                if (old["artifact_digest"] == m["artifact_digest"]
                        and old.get("eval_digest") == m.get("eval_digest")):
                    return old
            vdir = self._vdir(m["version"])
            try:
                for rel, path in files.items():
                    got = self.store.upload(path, f"{vdir}/artifacts/{rel}")
                    if got != m["artifacts"][rel]["sha256"]:
                        raise IntegrityError(f"{path} changed while it was being registered")
                self.store.write_atomic(f"{vdir}/manifest.json",
                                        json.dumps(m, indent=2, ensure_ascii=False, default=str).encode())
            except BaseException:
                self.store.delete_dir(vdir)  # no manifest -> never a visible half version
                raise
            self._event("register", version=m["version"], run=str(run_dir))
        return m

    def promote(self, ref: str, force: bool = False) -> dict:
        """Make ``ref`` the champion (old champion -> previous). Returns the new aliases.

        Without ``force`` the version must carry a passing gate decision made against the
        current champion (a stale comparison is refused: re-run ``rayft eval``).
        """
        with self._lock():
            m = self.verify(ref)
            a = self.aliases()
            v = m["version"]
            if a.get("champion") == v:
                return a
            if not force:
                ev = m.get("eval") or {}
                if ev.get("decision") != "promote":
                    why = "; ".join(r for r in ev.get("reasons", []) if r.startswith("FAIL")) or "no evaluation"
                    raise RegistryError(f"{self.name}/{v} did not pass the gate ({why}); run `rayft eval` "
                                        "or pass force=true")
                if ev.get("champion_version") != a.get("champion"):
                    raise RegistryError(f"{self.name}/{v} was evaluated against "
                                        f"{ev.get('champion_version') or 'the base model'}, but the champion is "
                                        f"now {a.get('champion') or 'unset'}; re-run `rayft eval` or pass force=true")
            new = {"champion": v, "previous": a.get("champion"),
                   "history": [*a.get("history", []), v], "updated": time.time()}
            self._write_aliases(new)
            self._event("promote", version=v, previous=a.get("champion"), forced=force)
        return new

    def rollback(self) -> dict:
        """champion <- previous; previous <- the champion before that. Returns the new aliases."""
        with self._lock():
            a = self.aliases()
            prev = a.get("previous")
            if not prev:
                raise RegistryError(f"registry {self.name!r}: no previous champion to roll back to")
            self.verify(prev)
            hist = list(a.get("history", []))
            if hist and hist[-1] == a.get("champion"):
                hist.pop()
            if not hist or hist[-1] != prev:
                hist.append(prev)
            alive = {m["version"] for m in self.versions()}
            earlier = [h for h in hist[:-1] if h in alive and h != prev]
            new = {"champion": prev, "previous": earlier[-1] if earlier else None, "history": hist,
                   "updated": time.time()}
            self._write_aliases(new)
            self._event("rollback", version=prev, replaced=a.get("champion"))
        return new

    def cleanup(self, keep_best: int) -> list[str]:
        """Delete all but the ``keep_best`` best-scoring versions; aliased ones are always kept."""
        if keep_best < 1:
            return []
        with self._lock():
            a = self.aliases()
            protected = {a.get("champion"), a.get("previous")} - {None}

            def rank(m: dict):
                s = m.get("score") or {}
                val = s.get("value")
                if val is None:
                    return (1, 0.0, -m["created"])
                return (0, -val if s.get("higher_is_better", True) else val, -m["created"])

            ranked = sorted(self.versions(), key=rank)
            keep = {m["version"] for m in ranked[:keep_best]} | protected
            doomed = [m["version"] for m in ranked if m["version"] not in keep]
            for v in doomed:
                self.store.delete_file(f"{self._vdir(v)}/manifest.json")  # disappears atomically first
                self.store.delete_dir(self._vdir(v))
            if doomed:
                self._event("cleanup", deleted=doomed, keep_best=keep_best)
        return doomed
