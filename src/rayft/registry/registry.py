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

Concurrent writers. Local disks: one writer at a time (``flock`` on ``<name>/.lock``).
S3 (``s3://``, no lock, no rename): every alias move is a compare-and-swap on
``aliases.json`` (read it with its ETag, PUT with ``If-Match``; the first write uses
``If-None-Match: *``); a writer that loses re-reads the aliases, re-checks (a non-forced
promote whose gate was made against a champion that just changed is refused) and tries
again. So concurrent promotes/rollbacks are applied one after another: none is lost, and
``previous``/``history`` always name the champion each one actually replaced. A new version
first claims its directory with a create-only ``.claim`` object (a clash picks another id)
and its manifest is written create-only, so two registrations never share a version.
Other object stores (gs://, hdfs://...): last writer wins on ``aliases.json``.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import sys
import time
import uuid
from pathlib import Path, PurePosixPath

from .fs import Store
from .lineage import ALIASES, RegistryError, build_manifest, check_eval_report, collect_artifacts

VERSION_RE = re.compile(r"^v\d{9,}_[0-9a-f]{4}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
#: In-progress uploads: ``versions/.tmp-{unix_ts}-{version}-{rand}/``, renamed to the version
#: dir when complete (local disks). Anything left by a killed writer is removed by ``gc``.
TMP_PREFIX = ".tmp-"
#: Object stores have no lock: only incomplete uploads older than this are collected.
REMOTE_GC_AGE_S = 3600
#: S3 compare-and-swap on aliases.json: attempts before giving up (other writers kept winning)
CAS_ATTEMPTS = 50


def unsafe_rel(rel) -> str | None:
    """Why ``rel`` (an artifact path from a manifest) is not a plain relative path inside the
    version directory, or None when it is."""
    if not isinstance(rel, str) or not rel:
        return "is not a non-empty string"
    if "\\" in rel or "\x00" in rel or any(ord(c) < 32 for c in rel):
        return "contains a backslash or control character"
    if PurePosixPath(rel).is_absolute() or re.match(r"^[A-Za-z]:", rel) or "://" in rel:
        return "is absolute"
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "escapes the version directory ('..', '.' or an empty component)"
    if parts[0] not in ("adapter", "model", "tokenizer"):
        return "is not under adapter/, model/ or tokenizer/"
    return None


def check_manifest(m, version: str, where: str) -> dict:
    """A manifest read from storage, checked field by field before anything uses it.

    Refuses (RegistryError, one line naming ``where``) a manifest whose version is not its
    directory, whose artifact paths are absolute or escape the version directory, or whose
    hashes/kind/base model are malformed. The registry never turns remote code on: a
    ``base_model.trust_remote_code`` it holds is reported as ``trust_remote_code_recorded``
    and forced off (only a serving/eval config can turn it on, explicitly).
    """
    def bad(msg: str):
        raise RegistryError(f"{where}: {msg}; refusing to use this manifest")

    if not isinstance(m, dict):
        bad(f"expected a JSON object, got {type(m).__name__}")
    if m.get("version") != version:
        bad(f"'version' is {m.get('version')!r}, expected {version!r} (its directory name)")
    arts = m.get("artifacts")
    if not isinstance(arts, dict) or not arts:
        bad("'artifacts' must be a non-empty object {path: {sha256, bytes}}")
    for rel, meta in arts.items():
        why = unsafe_rel(rel)
        if why:
            bad(f"artifact path {rel!r} {why}")
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str) or not SHA256_RE.match(meta["sha256"]):
            bad(f"artifact {rel!r}: expected {{\"sha256\": <64 hex digits>}}")
    if m.get("kind") not in ("lora", "full"):
        bad(f"'kind' is {m.get('kind')!r}, expected 'lora' or 'full'")
    if not any(r.startswith("adapter/" if m["kind"] == "lora" else "model/") for r in arts):
        bad(f"kind {m['kind']!r} but no {'adapter' if m['kind'] == 'lora' else 'model'}/ artifacts")
    b = m.get("base_model")
    if not isinstance(b, dict) or not isinstance(b.get("name"), str) or not b["name"]:
        bad("'base_model.name' must be a non-empty string")
    if not isinstance(b.get("seed", 0), int) or isinstance(b.get("seed", 0), bool):
        bad(f"'base_model.seed' must be an integer, got {b.get('seed')!r}")
    if not isinstance(m.get("created"), (int, float)) or isinstance(m.get("created"), bool):
        bad(f"'created' must be a number, got {m.get('created')!r}")
    for key in ("eval", "score", "metrics", "data", "config"):
        if m.get(key) is not None and not isinstance(m[key], dict):
            bad(f"'{key}' must be an object or null, got {type(m[key]).__name__}")
    if m.get("eval") is not None:
        ev = m["eval"]
        if not isinstance(ev.get("reasons") or [], list) or not all(isinstance(r, str) for r in ev.get("reasons") or []):
            bad("'eval.reasons' must be a list of strings")
        if ev.get("champion_version") is not None and not isinstance(ev["champion_version"], str):
            bad("'eval.champion_version' must be a version id or null")
    s = m.get("score")
    if s is not None and (not isinstance(s.get("value"), (int, float, type(None))) or isinstance(s.get("value"), bool)):
        bad("'score.value' must be a number or null")
    for key in ("system_prompt", "language"):
        if not isinstance(m.get(key, ""), str):
            bad(f"'{key}' must be a string")
    b = {k: v for k, v in b.items() if k != "trust_remote_code"}
    if m["base_model"].get("trust_remote_code"):
        b["trust_remote_code_recorded"] = True
    b["trust_remote_code"] = False
    return dict(m, base_model=b)


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
        self.cas_conflicts = 0  # S3: alias writes that lost a race and were retried (see _move_aliases)
        from ..models.load import cache_dir as rayft_cache
        self.cache = Path(cache_dir) if cache_dir else rayft_cache() / "registry"

    # -- reading -------------------------------------------------------------------------
    def _vdir(self, version: str) -> str:
        return f"{self.name}/versions/{version}"

    def exists(self) -> bool:
        """Whether the registry root exists at all (``register`` creates it)."""
        return self.store.exists("")

    def require_exists(self) -> None:
        """RegistryError (one line) when the registry root is missing: a mistyped path must not
        read as an empty registry ("no champion")."""
        if not self.exists():
            from ..objstore import shown
            raise RegistryError(f"registry {shown(self.uri)}: no such registry (the path does not exist; check "
                                "registry.uri, or create it with `rayft registry add`)")

    def _read_json(self, rel: str, what: str):
        where = self.store.path(rel)
        try:
            return json.loads(self.store.read_bytes(rel))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise RegistryError(f"{where}: corrupt {what}: expected JSON ({msg})") from None

    def aliases(self) -> dict:
        rel = f"{self.name}/aliases.json"
        if not self.store.exists(rel):
            return {"champion": None, "previous": None, "history": []}
        return self._check_aliases(self._read_json(rel, "aliases file"))

    def _aliases_tagged(self) -> tuple[dict, str | None]:
        """(aliases, ETag) from one read, for a compare-and-swap (S3); ETag None: no file yet.
        Other stores: (aliases(), None)."""
        if not self.store.cas:
            return self.aliases(), None
        rel = f"{self.name}/aliases.json"
        data, tag = self.store.read_tagged(rel)
        if data is None:
            return {"champion": None, "previous": None, "history": []}, None
        try:
            a = json.loads(data)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise RegistryError(f"{self.store.path(rel)}: corrupt aliases file: expected JSON "
                                f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        return self._check_aliases(a), tag

    def _check_aliases(self, a) -> dict:
        where = self.store.path(f"{self.name}/aliases.json")
        if not isinstance(a, dict):
            raise RegistryError(f"{where}: corrupt aliases file: expected a JSON object")
        for k in ALIASES:
            if a.get(k) is not None and not (isinstance(a[k], str) and VERSION_RE.match(a[k])):
                raise RegistryError(f"{where}: '{k}' is {a[k]!r}, expected a version id like v1763856000_ab12")
        hist = a.get("history", [])
        if not isinstance(hist, list) or not all(isinstance(h, str) and VERSION_RE.match(h) for h in hist):
            raise RegistryError(f"{where}: 'history' must be a list of version ids")
        return a

    def _manifest(self, version: str) -> dict:
        rel = f"{self._vdir(version)}/manifest.json"
        return check_manifest(self._read_json(rel, "manifest"), version, self.store.path(rel))

    def versions(self) -> list[dict]:
        """Manifests of every complete version, oldest first. A version whose manifest is
        corrupt or forged is left out (with a warning on stderr); ``get`` names the problem."""
        out = []
        for v in self.store.list_dir(f"{self.name}/versions"):
            if VERSION_RE.match(v) and self.store.exists(f"{self._vdir(v)}/manifest.json"):
                try:
                    out.append(self._manifest(v))
                except RegistryError as e:
                    print(f"[rayft] registry: skipping {v}: {e}", file=sys.stderr)
        return sorted(out, key=lambda m: (m["created"], m["version"]))

    def resolve(self, ref: str) -> str:
        """An alias or version id -> a version id that exists; RegistryError otherwise."""
        ref = (ref or "").strip() if isinstance(ref, str) else ""
        if ref in ALIASES:
            v = self.aliases().get(ref)
            if not v:
                raise RegistryError(f"registry {self.name!r}: alias {ref!r} is not set "
                                    f"(promote a version first: rayft registry promote version=...)")
            if not self.store.exists(f"{self._vdir(v)}/manifest.json"):
                raise RegistryError(f"registry {self.name!r}: alias {ref!r} points to {v}, which does not exist")
            return v
        if not VERSION_RE.match(ref):
            raise RegistryError(f"registry {self.name!r}: {ref[:80]!r} is neither an alias ({', '.join(ALIASES)}) "
                                "nor a version id like v1763856000_ab12")
        if not self.store.exists(f"{self._vdir(ref)}/manifest.json"):
            known = [m["version"] for m in self.versions()][-5:]
            raise RegistryError(f"registry {self.name!r}: unknown version {ref!r}; latest versions: "
                                f"{', '.join(known) or '(none)'}")
        return ref

    def get(self, ref: str) -> dict:
        """The manifest of an alias or version id (checked: see ``check_manifest``)."""
        return self._manifest(self.resolve(ref))

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
        the rayft cache: each artifact goes to a temp name inside the version's cache dir,
        its sha256 is checked, and only then is it renamed into place. Artifact paths come
        from the (checked) manifest, so none is absolute or escapes the version directory.
        """
        m = self.get(ref)
        v = m["version"]
        if self.store.local:
            self.verify(v)
            return m, Path(self.store.path(f"{self._vdir(v)}/artifacts"))
        import hashlib
        from ..storage import fsync_dir
        key = hashlib.sha256(self.uri.encode()).hexdigest()[:12]
        dest = (self.cache / key / self.name / v).resolve()
        dest.mkdir(parents=True, exist_ok=True)
        for rel, meta in m["artifacts"].items():
            final = (dest / rel).resolve()
            if unsafe_rel(rel) or dest not in final.parents:  # check_manifest already refused these
                raise RegistryError(f"{self.name}/{v}: artifact path {rel!r} escapes {dest}")
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.part")
            try:
                got = self.store.download(f"{self._vdir(v)}/artifacts/{rel}", tmp)
                if got != meta["sha256"]:
                    raise IntegrityError(f"{self.name}/{v}: downloaded {rel} has sha256 {got[:12]}..., "
                                         f"registered {meta['sha256'][:12]}...")
                os.replace(tmp, final)
                fsync_dir(final.parent)
            finally:
                tmp.unlink(missing_ok=True)
        wanted = {(dest / rel).resolve() for rel in m["artifacts"]}
        for p in sorted(dest.rglob("*")):  # left by an earlier (interrupted or forged) fetch
            if (p.is_file() or p.is_symlink()) and p not in wanted:
                p.unlink()
        return m, dest

    # -- writing -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self):
        """Serialize writers on local disks (flock). S3: conditional writes instead (see the
        module docstring); other object stores: last writer wins."""
        if not self.store.local:
            yield
            return
        from ..storage import exclusive_lock
        p = Path(self.store.path(f"{self.name}/.lock"))
        p.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(p):
            yield

    def _event(self, action: str, **info) -> None:
        ev = {"action": action, "time": time.time(), "command": " ".join(sys.argv), **info}
        self.store.write_atomic(f"{self.name}/events/{time.time_ns()}-{action}.json",
                                json.dumps(ev, indent=2, default=str).encode())

    def _write_aliases(self, a: dict) -> None:
        self.store.write_atomic(f"{self.name}/aliases.json", json.dumps(a, indent=2).encode())

    def _move_aliases(self, change) -> tuple[dict, dict]:
        """Apply ``change(current aliases) -> new aliases | None`` (None: nothing to do) and
        return (old, new). Local: under the writer lock, one atomic write. S3: a compare-and-
        swap loop (``If-Match`` on the ETag read), ``change`` re-run on the fresh aliases after
        each lost race, so its checks always hold for the state it replaces."""
        rel = f"{self.name}/aliases.json"
        for attempt in range(CAS_ATTEMPTS):
            a, tag = self._aliases_tagged()
            new = change(a)
            if new is None:
                return a, a
            if not self.store.cas:
                self._write_aliases(new)
                return a, new
            _pause_hook("RAYFT_REGISTRY_PAUSE_BEFORE_ALIAS_WRITE", "aliases read")
            if self.store.write_if(rel, json.dumps(new, indent=2).encode(), tag):
                return a, new
            self.cas_conflicts += 1
            time.sleep(random.uniform(0.02, 0.1) * min(attempt + 1, 10))
        raise RegistryError(f"registry {self.name!r}: aliases.json changed under {CAS_ATTEMPTS} attempts in a row "
                            "(other writers are promoting); nothing was changed, retry")

    def gc(self) -> list[str]:
        """Remove what killed writers left: temp upload dirs and version dirs without a
        manifest. Local registries: called under the writer lock, so nothing in flight is
        touched. Object stores (no lock): only leftovers older than ``REMOTE_GC_AGE_S``."""
        removed = []
        now = time.time()
        for d in self.store.list_dir(f"{self.name}/versions"):
            if d.startswith(TMP_PREFIX):
                ts = d[len(TMP_PREFIX):].split("-", 1)[0]
            elif VERSION_RE.match(d) and not self.store.exists(f"{self._vdir(d)}/manifest.json"):
                ts = d[1:].split("_", 1)[0]
            else:
                continue
            if not self.store.local and not (ts.isdigit() and now - int(ts) > REMOTE_GC_AGE_S):
                continue
            self.store.delete_dir(f"{self.name}/versions/{d}")
            removed.append(d)
        if removed:
            self._event("gc", removed=removed)
        return removed

    def register(self, run_dir: str | Path, eval_report: dict | None = None, parent: str | None = None) -> dict:
        """Add a finished training run as a new immutable version; returns its manifest.

        Registering the same artifacts with the same evaluation again returns the existing
        version instead of a duplicate. An ``eval_report`` that records the candidate's
        artifact digest (``candidate.artifact_digest``, written by ``rayft eval``) must match
        this run's artifacts: another run's gate decision is refused.

        Artifacts are uploaded into ``versions/.tmp-<ts>-<version>-<rand>/`` and renamed to
        the version directory once complete (local disks), manifest last; a writer killed at
        any point leaves only a temp dir, which the next ``register``/``cleanup`` removes.
        """
        run_dir = Path(os.path.expanduser(str(run_dir)))
        files = collect_artifacts(run_dir)
        if eval_report is not None:
            check_eval_report(eval_report)
        with self._lock():
            self.gc()
            existing = self.versions()
            taken = {x["version"] for x in existing}
            m = build_manifest(run_dir, files, eval_report, parent, self.name, taken=taken)
            bound = ((eval_report or {}).get("candidate") or {}).get("artifact_digest")
            if bound is not None and bound != m["artifact_digest"]:
                raise RegistryError(f"eval.json was made for artifacts {str(bound)[:12]}..., but {run_dir} holds "
                                    f"{m['artifact_digest'][:12]}...: evaluate this run (`rayft eval candidate={run_dir}`)")
            for old in existing:
                if (old["artifact_digest"] == m["artifact_digest"]
                        and old.get("eval_digest") == m.get("eval_digest")):
                    return old
            while self.store.cas and not self.store.write_if(f"{self._vdir(m['version'])}/.claim",
                                                             uuid.uuid4().hex.encode(), None):
                taken.add(m["version"])  # another writer holds this id: take the next one
                if len(taken) > len(existing) + 100:
                    raise RegistryError(f"registry {self.name!r}: could not claim a version id (S3)")
                m = build_manifest(run_dir, files, eval_report, parent, self.name, taken=taken)
            vdir = self._vdir(m["version"])
            work = (f"{self.name}/versions/{TMP_PREFIX}{int(time.time())}-{m['version']}-{uuid.uuid4().hex[:8]}"
                    if self.store.local else vdir)
            try:
                for rel, path in files.items():
                    got = self.store.upload(path, f"{work}/artifacts/{rel}")
                    if got != m["artifacts"][rel]["sha256"]:
                        raise IntegrityError(f"{path} changed while it was being registered")
                    _pause_hook()
                if work != vdir:
                    self.store.fsync_tree(work)
                    os.replace(self.store.path(work), self.store.path(vdir))
                    self.store.fsync_dir(f"{self.name}/versions")
                manifest = json.dumps(m, indent=2, ensure_ascii=False, default=str).encode()
                if not self.store.cas:
                    self.store.write_atomic(f"{vdir}/manifest.json", manifest)
                elif not self.store.write_if(f"{vdir}/manifest.json", manifest, None):  # create-only
                    raise RegistryError(f"{self.store.path(vdir)}: manifest already exists (claimed by this writer)")
            except BaseException:
                self.store.delete_dir(work)
                if work != vdir and not self.store.exists(f"{vdir}/manifest.json"):
                    self.store.delete_dir(vdir)  # no manifest -> never a visible half version
                raise
            self._event("register", version=m["version"], run=str(run_dir))
        return m

    def promote(self, ref: str, force: bool = False) -> dict:
        """Make ``ref`` the champion (old champion -> previous). Returns the new aliases.

        Without ``force`` the version must carry a passing gate decision made against the
        current champion (a stale comparison is refused: re-run ``rayft eval``).
        """
        self.require_exists()
        with self._lock():
            m = self.verify(ref)
            v = m["version"]

            def change(a: dict) -> dict | None:
                if a.get("champion") == v:
                    return None
                if not force:
                    ev = m.get("eval") or {}
                    if ev.get("decision") != "promote":
                        why = "; ".join(r for r in ev.get("reasons", []) if r.startswith("FAIL")) or "no evaluation"
                        raise RegistryError(f"{self.name}/{v} did not pass the gate ({why}); run `rayft eval` "
                                            "or pass force=true")
                    if ev.get("champion_version") != a.get("champion"):
                        raise RegistryError(f"{self.name}/{v} was evaluated against "
                                            f"{ev.get('champion_version') or 'the base model'}, but the champion is "
                                            f"now {a.get('champion') or 'unset'}; re-run `rayft eval` or pass "
                                            "force=true")
                return {"champion": v, "previous": a.get("champion"),
                        "history": [*a.get("history", []), v], "updated": time.time()}

            a, new = self._move_aliases(change)
            if new is a:
                return a
            self._event("promote", version=v, previous=a.get("champion"), forced=force)
        return new

    def rollback(self) -> dict:
        """champion <- previous; previous <- the champion before that. Returns the new aliases."""
        self.require_exists()
        with self._lock():
            def change(a: dict) -> dict:
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
                return {"champion": prev, "previous": earlier[-1] if earlier else None, "history": hist,
                        "updated": time.time()}

            a, new = self._move_aliases(change)
            self._event("rollback", version=new["champion"], replaced=a.get("champion"))
        return new

    def cleanup(self, keep_best: int) -> list[str]:
        """Delete all but the ``keep_best`` best-scoring versions; aliased ones are always kept.
        Also collects what killed writers left (``gc``)."""
        if keep_best < 1:
            if self.exists():
                with self._lock():
                    self.gc()
            return []
        self.require_exists()
        with self._lock():
            self.gc()
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


def _pause_hook(var: str = "RAYFT_REGISTRY_PAUSE_AFTER_UPLOAD", what: str = "artifact uploaded") -> None:
    """Test hooks: ``RAYFT_REGISTRY_PAUSE_AFTER_UPLOAD=<s>`` sleeps after each artifact upload
    (the kill -9 test kills ``rayft registry add`` there); ``RAYFT_REGISTRY_PAUSE_BEFORE_ALIAS_WRITE``
    between reading and conditionally writing aliases.json on S3 (widens the race window)."""
    pause = float(os.environ.get(var, "0") or 0)
    if pause:
        print(f"{var}: {what}", file=sys.stderr, flush=True)
        time.sleep(pause)
