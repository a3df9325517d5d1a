"""What a registry version records: its artifacts (safetensors only) and lineage. Pure I/O on
the local run directory; nothing is uploaded here.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

from ..metric_direction import HIGHER_IS_BETTER
from .fs import sha256_file

ALIASES = ("champion", "previous")
#: Weights must be safetensors; the rest of a model/tokenizer directory is text. Anything
#: else (pytorch_model.bin, *.pt, *.pkl, ...) could be a pickle and is refused.
ALLOWED_SUFFIXES = {".safetensors", ".json", ".txt", ".jinja", ".model", ".md", ".tiktoken", ".vocab"}


class RegistryError(ValueError):
    """A registry operation that cannot be done; the message says why. Nothing was changed."""


def read_run_report(run_dir: Path) -> dict:
    """A train run's report.json, or a one-line RegistryError naming it and what was expected."""
    p = Path(run_dir) / "report.json"
    try:
        rep = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise RegistryError(f"{p}: corrupt report.json: expected the JSON object `rayft train` writes "
                            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not isinstance(rep, dict) or not isinstance(rep.get("config") or {}, dict):
        raise RegistryError(f"{p}: expected a JSON object with a 'config' object (the report `rayft train` writes)")
    return rep


def collect_artifacts(run_dir: Path) -> dict[str, Path]:
    """The files of a finished ``rayft train`` run to register: ``adapter/`` or ``model/``, and
    ``tokenizer/``. Refuses non-safetensors weights and runs without weights."""
    if not (run_dir / "report.json").exists():
        raise RegistryError(f"{run_dir}: no report.json; register a finished `rayft train` run directory")
    subs = [s for s in ("adapter", "model") if (run_dir / s).is_dir()]
    if not subs:
        raise RegistryError(f"{run_dir}: neither adapter/ nor model/ found")
    files: dict[str, Path] = {}
    for sub in [subs[0], "tokenizer"]:
        d = run_dir / sub
        if not d.is_dir():
            raise RegistryError(f"{run_dir}: {sub}/ is missing")
        for p in sorted(d.rglob("*")):
            if not p.is_file():
                continue
            if p.suffix not in ALLOWED_SUFFIXES:
                raise RegistryError(f"{p}: only safetensors weights (and json/text metadata) can be registered; "
                                    f"'{p.suffix or p.name}' files may contain pickled code")
            files[f"{sub}/{p.relative_to(d).as_posix()}"] = p
    if not any(r.endswith(".safetensors") for r in files if r.startswith(subs[0])):
        raise RegistryError(f"{run_dir / subs[0]}: no .safetensors weights")
    return files


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def artifacts_digest(arts: dict[str, dict]) -> str:
    """One sha256 over every artifact's path and sha256: what a version (and the eval.json
    that gates it) is bound to."""
    return _digest([f"{rel} {a['sha256']}" for rel, a in sorted(arts.items())])


def run_artifact_digest(run_dir: Path) -> str | None:
    """``artifacts_digest`` of a run directory's registrable files (None if it has none)."""
    try:
        files = collect_artifacts(Path(run_dir))
    except RegistryError:
        return None
    return artifacts_digest({rel: {"sha256": sha256_file(p)} for rel, p in files.items()})


def data_lineage(report: dict) -> dict:
    """Content hash of the training data files the run read (missing files are listed)."""
    hashes, missing = {}, []
    for f in sorted(report.get("files") or {}):
        p = Path(f)
        if p.is_file():
            hashes[f] = sha256_file(p)
        else:
            missing.append(f)
    data_cfg = (report.get("config") or {}).get("data", {})
    return {"hash": _digest(sorted(hashes.values())) if hashes else None, "files": hashes,
            "missing": missing, "path": data_cfg.get("path"), "val_path": data_cfg.get("val_path"),
            "rows": {"train": report.get("train_rows"), "val": report.get("val_rows")}}


def check_eval_report(ev, where: str = "eval report") -> dict:
    """The fields of an eval report the registry reads, type-checked (one-line RegistryError)."""
    def bad(msg: str):
        raise RegistryError(f"{where}: {msg} (expected the JSON `rayft eval` writes)")

    if not isinstance(ev, dict):
        bad(f"expected a JSON object, got {type(ev).__name__}")
    if not isinstance(ev.get("decision"), str):
        bad("'decision' must be a string")
    if not isinstance(ev.get("reasons") or [], list) or not all(isinstance(r, str) for r in ev.get("reasons") or []):
        bad("'reasons' must be a list of strings")
    if ev.get("champion_version") is not None and not isinstance(ev["champion_version"], str):
        bad("'champion_version' must be a version id or null")
    for k in ("metrics", "gate", "candidate"):
        if ev.get(k) is not None and not isinstance(ev[k], dict):
            bad(f"'{k}' must be an object or null")
    cand = (ev.get("metrics") or {}).get("candidate")
    if cand is not None and not (isinstance(cand, dict) and isinstance(cand.get("golden", {}), dict)):
        bad("'metrics.candidate' must be an object with a 'golden' object")
    metric = (ev.get("gate") or {}).get("golden_metric", "similarity")
    if metric not in HIGHER_IS_BETTER:
        bad(f"'gate.golden_metric' is {metric!r}, expected one of {sorted(HIGHER_IS_BETTER)}")
    val = ((cand or {}).get("golden") or {}).get(metric)
    if val is not None and (isinstance(val, bool) or not isinstance(val, (int, float))):
        bad(f"'metrics.candidate.golden.{metric}' must be a number")
    return ev


def _eval_block(ev: dict) -> dict:
    keep = ("decision", "accept", "reasons", "champion_version", "champion", "gate", "metrics", "data", "path")
    cand = ev.get("candidate") if isinstance(ev.get("candidate"), dict) else {}
    return {k: ev.get(k) for k in keep} | {"artifact_digest": cand.get("artifact_digest")}


def score_of(ev: dict | None) -> dict | None:
    """The scalar keep-best-N ranks by: the candidate's golden score under the gate's metric."""
    if not ev or not ev.get("metrics"):
        return None
    metric = (ev.get("gate") or {}).get("golden_metric", "similarity")
    val = ev["metrics"].get("candidate", {}).get("golden", {}).get(metric)
    return {"metric": f"golden.{metric}", "value": val, "higher_is_better": HIGHER_IS_BETTER[metric]}


def build_manifest(run_dir: Path, files: dict[str, Path], eval_report: dict | None, parent: str | None,
                   name: str, taken: set[str]) -> dict:
    """Manifest of a new version: artifacts with sha256, lineage, metrics, eval decision."""
    report = read_run_report(run_dir)
    cfg = report.get("config") or {}
    arts = {rel: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for rel, p in files.items()}
    digest = artifacts_digest(arts)
    ev = _eval_block(eval_report) if eval_report else None
    created = time.time()
    ts = int(created)
    while f"v{ts}_{digest[:4]}" in taken:
        ts += 1
    model_cfg = cfg.get("model", {})
    return {
        "version": f"v{ts}_{digest[:4]}", "name": name, "created": created,
        "kind": "lora" if any(r.startswith("adapter/") for r in arts) else "full",
        "base_model": {"name": model_cfg.get("name"), "seed": cfg.get("run", {}).get("seed", 0),
                       "trust_remote_code": model_cfg.get("trust_remote_code", False)},
        "system_prompt": cfg.get("data", {}).get("system_prompt", ""),
        "language": cfg.get("data", {}).get("language", ""),
        "artifacts": arts, "artifact_digest": digest,
        "data": data_lineage(report),
        "config": cfg,
        "command": {"train": report.get("command"), "register": " ".join(sys.argv)},
        "metrics": {"train": {k: report.get(k) for k in ("steps", "loss_first", "loss_last", "val_loss_start",
                                                          "val_loss", "tokens_per_s", "wall_s")},
                    "eval": ev["metrics"] if ev else None},
        "eval": ev,
        "eval_digest": _digest([json.dumps(ev, sort_keys=True, default=str)]) if ev else None,
        "score": score_of(eval_report),
        "parent": parent if parent is not None else (ev or {}).get("champion_version"),
        "source_run": str(run_dir.resolve()),
    }
