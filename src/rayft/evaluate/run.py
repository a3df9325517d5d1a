"""`rayft eval`: candidate vs champion on val + golden with Ray Data batch inference, then the
gate, then (when accepted) the registry. Writes ``eval.json``; returns its path.

Pipeline (streaming, one actor per model so each loads once)::

    rows ─► Scorer(candidate) ─► Scorer(champion) ─► Similarity (embedding) or chrF/ROUGE-L ─► driver
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pyarrow as pa

from .. import _env, objstore
from ..config import ConfigError, StageRefused, to_dict
from ..storage import atomic_write_json
from . import data as eval_data
from .config import EvalConfig
from .gate import decide
from ..models.spec import base_spec, manifest_spec, run_spec
from .metrics import summarize
from .scorer import Scorer, Similarity, lexical_similarity

PREFIXES = ["candidate", "champion"]


def _registry(cfg: EvalConfig):
    from ..registry import Registry
    return Registry(cfg.registry.uri, cfg.registry.name) if cfg.registry.uri else None


def resolve_champion(cfg: EvalConfig, cand: dict) -> tuple[dict, str | None, str]:
    """(spec, champion version or None, human-readable ref). The base model when there is none."""
    from ..registry import RegistryError

    reg = _registry(cfg)
    ref = cfg.champion
    if ref != "base" and reg is not None:
        try:
            if ref or reg.aliases().get("champion"):
                m, local = reg.fetch(ref or "champion")  # hash-checked
                return manifest_spec(m, local, "champion"), m["version"], f"{reg.name}/{m['version']}"
        except RegistryError as e:
            raise ConfigError(f"champion: {e}") from None
    elif ref not in ("", "base"):
        raise ConfigError(f"champion={ref!r} names a registry version but registry.uri is empty")
    spec = base_spec(cand["base"], cand["seed"], cand["trust_remote_code"], cand["system_prompt"], "champion")
    return spec, None, f"base:{cand['base']}"


def score_rows(table: pa.Table, cand: dict, champ: dict, cfg: EvalConfig) -> list[dict]:
    """Run the Ray Data pipeline; returns every row with both models' scores."""
    import ray.data
    from ray.data import ActorPoolStrategy

    s, r = cfg.score, cfg.ray
    # Blocks cut on the driver: a repartition task would need a whole CPU, and with the
    # actors holding their fractions it could wait forever on a small cluster.
    step = max(1, -(-table.num_rows // 64))
    step = max(step, s.batch_size)
    ds = ray.data.from_arrow([table.slice(i, step) for i in range(0, table.num_rows, step)])
    for spec in (cand, champ):
        ds = ds.map_batches(Scorer, fn_constructor_kwargs=dict(
            spec=spec, prefix=spec["label"], max_seq_len=cfg.data.max_seq_len, max_new_tokens=s.max_new_tokens,
            generate=s.generate, threads=r.torch_threads), batch_size=s.batch_size, batch_format="pyarrow",
            compute=ActorPoolStrategy(size=1), num_cpus=r.num_cpus)
    if s.generate and s.similarity == "embedding":
        ds = ds.map_batches(Similarity, fn_constructor_kwargs=dict(model=s.embed_model, prefixes=PREFIXES,
                                                                   threads=r.torch_threads),
                            batch_size=64, batch_format="pyarrow", compute=ActorPoolStrategy(size=1),
                            num_cpus=r.num_cpus)
    elif s.generate:
        ds = ds.map_batches(lexical_similarity, fn_kwargs=dict(metric=s.similarity, prefixes=PREFIXES),
                            batch_size=64, batch_format="pyarrow", num_cpus=r.num_cpus)
    from ..progress import bar as progress

    parts = []
    with progress(table.num_rows, "eval score", "row") as bar:  # a bar on a terminal, else a line every 30 s
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            parts.append(block)
            bar.update(block.num_rows)
    return pa.concat_tables(parts).sort_by("row").to_pylist()


def build_metrics(rows: list[dict]) -> dict:
    """{"candidate": {"val": summary, "golden": summary}, "champion": {...}}."""
    out: dict = {}
    for p in PREFIXES:
        out[p] = {split: summarize([r for r in rows if r["split"] == split], p) for split in ("val", "golden")}
    return out


def _candidate_digest(run_dir: str) -> str | None:
    """The candidate's artifact digest: binds this eval.json (and its gate decision) to these
    exact weights; ``rayft registry add`` refuses it for any other run."""
    from ..registry.lineage import run_artifact_digest
    return run_artifact_digest(Path(run_dir).expanduser())


def _fetch_candidate(uri: str) -> str:
    """candidate=s3://... (a run trained with run.dir=s3://...): report.json, adapter/ or model/,
    tokenizer/ (and an earlier eval.json) copied into a local cache directory keyed by the URI,
    refreshed on every eval. Returns that directory."""
    import shutil

    from ..registry.commands import _fetch_run
    dest = objstore.work_dir("eval-runs", uri)
    shutil.rmtree(dest, ignore_errors=True)
    return _fetch_run(uri, dest, key="candidate")


def run_eval(cfg: EvalConfig) -> str:
    """Evaluate, gate, optionally register/promote; returns the eval.json path (a local path: for
    a candidate in a bucket, its cached copy's eval.json, also copied beside the run in the bucket)."""
    t0 = time.time()
    remote = objstore.filesystem(cfg.candidate) if objstore.is_remote(cfg.candidate) else None
    if remote is not None:
        cfg = cfg.model_copy(update={"candidate": _fetch_candidate(cfg.candidate)})
    cand = run_spec(cfg.candidate, "candidate")
    run_cfg = json.loads((Path(cfg.candidate).expanduser() / "report.json").read_text()).get("config") or {}
    tables = eval_data.eval_tables(cfg, run_cfg)
    champ, champ_version, champ_ref = resolve_champion(cfg, cand)
    table = pa.concat_tables([tables["val"], tables["golden"]])
    table = table.append_column("row", pa.array(range(table.num_rows), pa.int64()))
    print(f"[rayft] eval: {tables['val'].num_rows} val + {tables['golden'].num_rows} golden rows | candidate "
          f"{remote.shown if remote else cfg.candidate} vs champion {champ_ref}", file=sys.stderr)
    started = _env.ray_start(cfg.ray.address)
    try:
        rows = score_rows(table, cand, champ, cfg)
    finally:
        if started:
            import ray
            ray.shutdown()
    metrics = build_metrics(rows)
    decision = decide(metrics, cfg.gate)
    golden = [r for r in rows if r["split"] == "golden"][:3]
    report = {
        "candidate": {"run": remote.shown if remote else str(Path(cfg.candidate).expanduser().resolve()), "spec": cand,
                      "artifact_digest": _candidate_digest(cfg.candidate)},
        "champion": champ_ref, "champion_version": champ_version, "champion_spec": champ,
        "data": {s: {"rows": t.num_rows, "hash": eval_data.digest(t)} for s, t in tables.items()},
        "metrics": metrics, "gate": to_dict(cfg.gate), **decision,
        "score": {"similarity": cfg.score.similarity if cfg.score.generate else None,
                  "embed_model": cfg.score.embed_model if cfg.score.similarity == "embedding" else None},
        "samples": [{"prompt": r["prompt"], "reference": r["response"], "candidate": r["candidate_text"],
                     "champion": r["champion_text"]} for r in golden],
        "registered": None, "promoted": False, "config": to_dict(cfg),
        "command": " ".join(sys.argv), "time": time.time(), "wall_s": None,
    }
    out = Path(os.path.expanduser(cfg.output)) if cfg.output else Path(cfg.candidate).expanduser() / "eval.json"
    report["path"] = f"{remote.shown}/eval.json" if remote and not cfg.output else str(out)
    reg = _registry(cfg)
    if decision["accept"] and reg is not None and cfg.registry.register:
        from ..registry import RegistryError
        try:
            report["registered"] = reg.register(cfg.candidate, report)["version"]
            if cfg.registry.promote:
                reg.promote(report["registered"])
                report["promoted"] = True
            reg.cleanup(cfg.registry.keep_best)
        except RegistryError as e:
            report["registry_error"] = str(e)
    report["wall_s"] = time.time() - t0
    atomic_write_json(out, report)
    if remote is not None and not cfg.output:  # beside the run in the bucket (`rayft registry add` reads it)
        objstore.upload(str(out), remote, "eval.json")
    from ..tracking import log_eval
    log_eval(cfg, Path(cfg.candidate), report, out)  # tracking=[...]: scores + gate on the candidate's run
    for line in decision["reasons"]:
        print(f"[rayft]   {line}", file=sys.stderr)
    print(f"[rayft] decision: {decision['decision']}"
          + (f" | registered {reg.name}/{report['registered']}" if report["registered"] else "")
          + (" and promoted to champion" if report["promoted"] else "")
          + (f" | registry error: {report['registry_error']}" if report.get("registry_error") else "")
          + f" | {report['wall_s']:.0f} s", file=sys.stderr)
    return str(out)


def run_eval_cli(cfg: EvalConfig) -> str:
    """`rayft eval`: as ``run_eval``; a rejected candidate exits 3 (eval.json still written),
    so scripts can chain ``rayft eval ... && rayft registry promote ...``."""
    out = run_eval(cfg)
    ev = json.loads(Path(out).read_text())
    if not ev["accept"]:
        failed = [r for r in ev['reasons'] if r.startswith('FAIL')]
        raise StageRefused(f"gate rejected the candidate ({'; '.join(failed)}); see {out}", out)
    return out
