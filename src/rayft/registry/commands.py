"""``rayft registry list | show | add | promote | rollback | cleanup | context``.

Each returns the text the CLI prints. Registry errors surface as ``ConfigError`` so the
CLI prints one line and exits 2, with the registry unchanged.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import tempfile
from pathlib import Path

from ..config import ConfigError, FsPath, Section, opt
from .lineage import RegistryError, check_eval_report
from .registry import Registry


class RegistryConfig(Section):
    uri: FsPath = opt("runs/registry", "registry root: a local path or a pyarrow filesystem URI (s3://..., file://...)")
    name: str = opt("default", "model line inside the registry (e.g. default, en, zh)")
    version: str = opt("", "version id (v{unix_ts}_{hash4}) or alias (champion, previous); "
                       "show defaults to champion")
    run: str = opt("", "add: run directory written by `rayft train` (a local path, or its s3://... URI)")
    eval: str = opt("", "add: eval.json from `rayft eval` (default <run>/eval.json when it exists)")
    force: bool = opt(False, "promote a version that did not pass the gate against the current champion")
    keep_best: int = opt(0, "cleanup (and after add/promote): keep the N best-scoring versions; "
                         "champion and previous are never deleted (0: keep all)", ge=0)
    json: bool = opt(False, "print JSON instead of a table")
    file: str = opt("", "context: a UTF-8 text file (at most 256 KiB) to store as the line's context block, "
                    "which `rayft serve` puts in the system turn of every chat request for the line (memory "
                    "injection without training; servers pick it up within alias_refresh_s)")
    clear: bool = opt(False, "context: remove the line's context block (e.g. once a LoRA trained on those "
                      "memories is champion)")


@contextlib.contextmanager
def _errors():
    try:
        yield
    except RegistryError as e:
        raise ConfigError(str(e)) from None


def _reg(cfg: RegistryConfig, must_exist: bool = True) -> Registry:
    """The registry; reading commands refuse a root that does not exist (a typo must not look
    like an empty registry)."""
    reg = Registry(cfg.uri, cfg.name)
    if must_exist:
        reg.require_exists()
    return reg


def _fmt_score(m: dict) -> str:
    s = m.get("score") or {}
    v = s.get("value")
    return "-" if v is None else f"{s['metric']}={v:.4g}"


def run_list(cfg: RegistryConfig) -> str:
    """Table (or JSON) of every version with its aliases, score and gate decision."""
    with _errors():
        reg = _reg(cfg)
        a, vs = reg.aliases(), reg.versions()
    if cfg.json:
        return json.dumps({"aliases": a, "versions": [{k: m.get(k) for k in (
            "version", "created", "kind", "score", "parent", "artifact_digest")} | {
            "decision": (m.get("eval") or {}).get("decision")} for m in vs]}, indent=2)
    if not vs:
        from ..objstore import shown
        return f"registry {shown(cfg.uri)} / {cfg.name}: no versions"  # no keys from the URI
    tags = {}
    for alias in ("champion", "previous"):
        if a.get(alias):
            tags.setdefault(a[alias], []).append(alias)
    lines = [f"{'version':<20} {'created (UTC)':<20} {'kind':<5} {'gate':<8} {'score':<28} aliases"]
    for m in vs:
        when = dt.datetime.fromtimestamp(m["created"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(f"{m['version']:<20} {when:<20} {m['kind']:<5} "
                     f"{(m.get('eval') or {}).get('decision') or '-':<8} {_fmt_score(m):<28} "
                     f"{','.join(tags.get(m['version'], []))}")
    return "\n".join(lines)


def run_show(cfg: RegistryConfig) -> str:
    """A version's full manifest (lineage, metrics, artifact hashes), as JSON."""
    with _errors():
        m = _reg(cfg).get(cfg.version or "champion")
    return json.dumps(m, indent=2, ensure_ascii=False, default=str)


def _read_eval(path: Path) -> dict:
    """eval.json as a dict, or a one-line ConfigError naming the file and what was expected."""
    try:
        ev = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ConfigError(f"eval: {path}: corrupt eval.json: expected the JSON written by `rayft eval` "
                          f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    try:
        check_eval_report(ev, f"eval: {path}")
    except RegistryError as e:
        raise ConfigError(str(e)) from None
    cand = ev.get("candidate")
    if not isinstance(cand, dict) or not isinstance(cand.get("artifact_digest"), str):
        raise ConfigError(f"eval: {path}: no candidate.artifact_digest, so it cannot be bound to a run "
                          "(written by an older `rayft eval`?); re-run `rayft eval` on this run")
    return ev


def run_add(cfg: RegistryConfig) -> str:
    """Register a finished run (with its eval.json when present); prints the version id.

    The eval.json must have been made for this run's artifacts (its ``candidate.artifact_digest``);
    another run's gate decision is refused."""
    if not cfg.run:
        raise ConfigError("run is required: the run directory printed by `rayft train`")
    from .. import objstore
    if objstore.is_remote(cfg.run):
        with tempfile.TemporaryDirectory(prefix="rayft-run-") as tmp:
            return run_add(cfg.model_copy(update={"run": _fetch_run(cfg.run, Path(tmp))}))
    run = Path(os.path.expanduser(cfg.run))
    if not run.is_dir():
        raise ConfigError(f"run: {run} is not a directory (the run directory printed by `rayft train`)")
    ev_path = Path(os.path.expanduser(cfg.eval)) if cfg.eval else run / "eval.json"
    if cfg.eval and not ev_path.exists():
        raise ConfigError(f"eval: {ev_path} not found")
    ev = _read_eval(ev_path) if ev_path.exists() else None
    with _errors():
        reg = _reg(cfg, must_exist=False)
        m = reg.register(run, ev)
        reg.cleanup(cfg.keep_best)
    return m["version"]


def _fetch_run(uri: str, dest: Path, key: str = "run") -> str:
    """A finished run in object storage (``rayft train run.dir=s3://...``) copied to ``dest``:
    report.json, adapter/ or model/, tokenizer/ and eval.json (never the checkpoints). The
    registry re-hashes what it uploads, so nothing here is trusted beyond what a local run is."""
    from .. import objstore
    try:
        loc = objstore.filesystem(uri)
        names = objstore.list_dir(loc)
        if "report.json" not in names:
            raise ConfigError(f"{key}: {objstore.shown(uri)}: no report.json (is this a finished `rayft train` run?)")
        for name in ("report.json", "eval.json", "adapter", "model", "tokenizer"):
            if name in names:
                objstore.download(loc, name, str(dest / name))
    except OSError as e:
        raise ConfigError(f"{key}: {objstore.shown(uri)}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return str(dest)


def _aliases_line(reg: Registry, a: dict) -> str:
    return f"{reg.name}: champion={a.get('champion')} previous={a.get('previous')}"


def run_promote(cfg: RegistryConfig) -> str:
    """Move champion to ``version`` (after re-checking its artifact hashes and gate decision)."""
    if not cfg.version:
        raise ConfigError("version is required: a version id from `rayft registry list`")
    with _errors():
        reg = _reg(cfg)
        a = reg.promote(cfg.version, force=cfg.force)
        reg.cleanup(cfg.keep_best)
    return _aliases_line(reg, a)


def run_rollback(cfg: RegistryConfig) -> str:
    """Champion back to the previous version (after re-checking its artifact hashes)."""
    with _errors():
        reg = _reg(cfg)
        a = reg.rollback()
    return _aliases_line(reg, a)


def run_cleanup(cfg: RegistryConfig) -> str:
    """Delete all but the keep_best best versions (never champion or previous)."""
    if cfg.keep_best < 1:
        raise ConfigError("keep_best must be >= 1 for cleanup")
    with _errors():
        gone = _reg(cfg).cleanup(cfg.keep_best)
    return "deleted: " + (", ".join(gone) if gone else "(nothing)")


def run_context(cfg: RegistryConfig) -> str:
    """Set (file=...), clear (clear=true) or show the line's context block (digest and size only)."""
    from .context import ContextError, context_info, decode, set_context

    if cfg.file and cfg.clear:
        raise ConfigError("context: give file=... (set the block) or clear=true (remove it), not both")
    text = None
    if cfg.file:
        path = Path(os.path.expanduser(cfg.file))
        try:
            text = decode(path.read_bytes(), f"file: {path}")
        except OSError as e:
            raise ConfigError(f"file: {path}: cannot read it ({e.strerror or type(e).__name__})") from None
        except ContextError as e:
            raise ConfigError(str(e)) from None
        if not text:
            raise ConfigError(f"file: {path} is empty (to remove the block: clear=true)")
    with _errors():
        reg = _reg(cfg)
        info = set_context(reg, "" if cfg.clear else text) if cfg.clear or text is not None else context_info(reg)
    if cfg.json:
        return json.dumps({"name": reg.name, "context": info})
    if info is None:
        return f"{reg.name}: no context block"
    return f"{reg.name}: context block sha256 {info['sha256']}, {info['chars']} chars"
