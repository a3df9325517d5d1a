"""Curate benchmark: 100k planted-truth pairs (en + zh), rayft curate on Ray Data vs a
single-process baseline (plain Python + datasketch MinHashLSH) doing the same filters.

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 \
        .venv/bin/python benchmarks/curate_bench.py --n 100000 --repeat 3 --work /tmp/curate_bench

Prints a JSON summary and a Markdown table (for benchmarks/RESULTS.md): wall time, pairs/s,
and precision/recall of every filter against the planted truth for both pipelines, plus
one `rayft curate` CLI run in a fresh process (imports + Ray start + stage, end to end).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from rayft.cli import STAGES  # noqa: E402
from rayft.config import load  # noqa: E402
from rayft.curate import dedup as dd  # noqa: E402
from rayft.curate import filters as F  # noqa: E402
from rayft.testing import curate_score as score  # noqa: E402
from rayft.testing import pairs as synth  # noqa: E402
from rayft.curate.config import CurateConfig  # noqa: E402
from rayft.curate.secrets import find_secrets, mask  # noqa: E402


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --------------------------------------------------------------------------- baseline

def baseline(data: str, out: Path, cfg: CurateConfig) -> dict:
    """What a user writes without rayft: one process, a loop over rows, datasketch LSH."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasketch import MinHash, MinHashLSH

    from rayft.data.formats import read_file, resolve_paths
    from rayft.data.records import PAIRS_SCHEMA, split_of

    t0 = time.time()
    listed = F.low_value_list(cfg.low_value)
    lsh = MinHashLSH(threshold=cfg.dedup.threshold, num_perm=128)
    seen: set[str] = set()
    kept: dict = defaultdict(list)
    rejects: list[dict] = []
    n_in = 0
    for path in resolve_paths(data):
        res = read_file(path)
        n_in += len(res.rows) + len(res.rejects)
        for r in res.rejects:
            rejects.append({"filter": "read", "reason": r["reason"], "file": r["file"], "line": r["line"]})
        for row in res.rows:
            def drop(name: str, why: str) -> None:
                rejects.append({"filter": name, "reason": why, "file": row["file"], "line": row["line"]})
            for f in ("system", "prompt", "response"):
                row[f] = F.normalize_str(row[f], cfg.normalize)
            if not row["prompt"] or not row["response"]:
                drop("normalize", "empty")
                continue
            if row["format"] == "subtitle" and (why := F.timing_problem(row["meta"])):
                drop("normalize", why)
                continue
            if why := F.low_value_reason(row["prompt"], row["response"], cfg.low_value, listed):
                drop("low_value", why)
                continue
            spans = {f: find_secrets(row[f]) for f in ("system", "prompt", "response")}
            if any(getattr(cfg.secrets, s.kind) == "drop" for ss in spans.values() for s in ss):
                drop("secrets", "secret")
                continue
            for f, ss in spans.items():
                if ss:
                    row[f] = mask(row[f], ss, cfg.secrets.mask_format)
            row["language"] = F.canonical_language(row["language"], row["prompt"] + " " + row["response"])
            h = F.row_hash(row["system"], row["history"], row["prompt"], row["response"])
            if h in seen:
                drop("exact_dedup", "duplicate")
                continue
            seen.add(h)
            text = dd.dedup_text(row["system"], row["history"], row["prompt"], row["response"])
            m = MinHash(num_perm=128)
            n = cfg.dedup.ngram
            m.update_batch([text[i:i + n].encode("utf-8") for i in range(max(len(text) - n + 1, 1))])
            if lsh.query(m):
                drop("near_dedup", "near duplicate")
                continue
            lsh.insert(f"{row['file']}:{row['line']}", m)
            split = split_of(h, cfg.split.val_fraction, cfg.split.salt)
            kept[(row["language"], split)].append(row)
    for (lang, split), rows in kept.items():
        p = out / lang / split / "part-r0001-00000.parquet"
        p.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in PAIRS_SCHEMA.names} for r in rows],
                                            schema=PAIRS_SCHEMA), p)
    (out / "rejects").mkdir(parents=True, exist_ok=True)
    with open(out / "rejects" / "r0001.all.jsonl", "w", encoding="utf-8") as f:
        for r in rejects:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    wall = time.time() - t0
    return {"wall_s": round(wall, 2), "rows_in": n_in, "rows_kept": sum(map(len, kept.values())),
            "pairs_per_s": round(n_in / wall, 1)}


# --------------------------------------------------------------------------- rayft

def rayft_run(data: str, out: Path, cfg_overrides: list[str]) -> dict:
    import ray

    from rayft.curate.run import run_curate

    t0 = time.time()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    t_init = time.time() - t0
    try:
        cfg = load(CurateConfig, REPO / "configs" / "curate.yaml", [f"input={data}", f"output={out}", *cfg_overrides],
                   STAGES["curate"][3])
        t1 = time.time()
        msg = run_curate(cfg)
        stage = time.time() - t1
    finally:
        ray.shutdown()
    rep = json.loads((out / "report.json").read_text())
    return {"ray_init_s": round(t_init, 2), "stage_s": round(stage, 2), "wall_incl_init_s": round(t_init + stage, 2),
            "pairs_per_s": round(rep["rows_in"] / stage, 1), "rows_in": rep["rows_in"], "rows_kept": rep["rows_kept"],
            "timing": rep["timing"], "filters": rep["filters"], "message": msg}


def cli_run(data: str, out: Path) -> dict:
    """`rayft curate` as a user runs it: a fresh process (imports + local Ray start + stage)."""
    import subprocess

    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "rayft.cli", "curate", "--config", str(REPO / "configs" / "curate.yaml"),
                        f"input={data}", f"output={out}"], cwd=REPO, capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})  # its own local Ray
    wall = time.time() - t0
    if p.returncode:
        raise RuntimeError(p.stderr[-3000:])
    rep = json.loads((out / "report.json").read_text())
    return {"wall_s": round(wall, 2), "pairs_per_s": round(rep["rows_in"] / wall, 1), "timing": rep["timing"],
            "message": p.stdout.strip().splitlines()[-1]}


def _quality_rows(name: str, s: dict) -> list[str]:
    sec, nd = s["secrets"], s["near_dedup"]
    kinds = ", ".join(f"{k} {v['caught']}/{v['planted']}" for k, v in sec["by_kind"].items())
    return [
        f"| {name} | secrets | {sec['recall']:.4f} | {sec['precision']:.4f} | FP {sec['fp']} "
        f"({sec['fp_rate_negatives']:.2%} of non-secret rows, {sec['fp_rate_decoys']:.2%} of decoys); {kinds} |",
        f"| {name} | low_value | {s['low_value']['recall']:.4f} | {s['low_value']['precision']:.4f} | |",
        f"| {name} | exact_dedup | {s['exact_dedup']['recall']:.4f} | {s['exact_dedup']['precision']:.4f} | |",
        f"| {name} | near_dedup (J >= 0.8) | {nd['recall']:.4f} | {nd['precision']:.4f} | "
        f"{nd['planted_at_threshold']} planted copies at J >= 0.8 ({nd['planted']} planted in all); "
        f"false merges {nd['false_merges']} ({nd['false_merge_rate']:.2%} of near-dup removals) |",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--work", default="/tmp/curate_bench")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="in-process rayft runs (fresh output dir each)")
    ap.add_argument("--skip-cli", action="store_true", help="skip the `rayft curate` subprocess run")
    args = ap.parse_args()
    work = Path(args.work)
    gen = work / "gen"
    if not (gen / "truth.jsonl").exists():
        t = time.time()
        info = synth.generate(gen, n=args.n, seed=args.seed, n_files=args.files)
        print(f"generated {info['rows']} rows in {time.time() - t:.1f} s: {info['counts']}", flush=True)
    data = str(gen / "data")
    result = {"n": args.n, "cpus": os.cpu_count(), "load_before": load_avg()}
    for d in ("out_rayft", "out_baseline", "out_cli"):
        shutil.rmtree(work / d, ignore_errors=True)
    runs = []
    for k in range(args.repeat):
        shutil.rmtree(work / "out_rayft", ignore_errors=True)
        runs.append(rayft_run(data, work / "out_rayft", []))
        print(f"rayft run {k + 1}/{args.repeat}: {runs[-1]['stage_s']} s (load {load_avg()})", flush=True)
    result["rayft"] = sorted(runs, key=lambda r: r["stage_s"])[len(runs) // 2]  # the median run
    result["rayft"]["all_stage_s"] = [r["stage_s"] for r in runs]
    result["load_after_rayft"] = load_avg()
    result["rayft"]["quality"] = score.score(work / "out_rayft", gen / "truth.jsonl")
    print(json.dumps(result["rayft"], indent=1, default=str), flush=True)
    if not args.skip_baseline:
        cfg = load(CurateConfig, REPO / "configs" / "curate.yaml", [f"input={data}", "output=unused"], STAGES["curate"][3])
        result["baseline"] = baseline(data, work / "out_baseline", cfg)
        result["load_after_baseline"] = load_avg()
        result["baseline"]["quality"] = score.score(work / "out_baseline", gen / "truth.jsonl")
        print(json.dumps(result["baseline"], indent=1, default=str), flush=True)
    if not args.skip_cli:
        result["cli"] = cli_run(data, work / "out_cli")
        result["load_after_cli"] = load_avg()
        print(json.dumps(result["cli"], indent=1, default=str), flush=True)
    (work / "result.json").write_text(json.dumps(result, indent=1, default=str))
    r = result["rayft"]
    lines = ["| pipeline | wall (s) | pairs/s | notes |", "|---|---|---|---|",
             f"| rayft curate (Ray Data, 2 CPUs), in process | {r['stage_s']} | {r['pairs_per_s']:,.0f} | median of "
             f"{len(r['all_stage_s'])} ({', '.join(map(str, r['all_stage_s']))} s); excl. ray.init "
             f"({r['ray_init_s']} s; {r['wall_incl_init_s']} s incl.); read+filter {r['timing']['read_filter_s']} s, "
             f"global dedup {r['timing']['dedup_s']} s, write {r['timing']['write_s']} s |"]
    if "cli" in result:
        c = result["cli"]
        lines.append(f"| `rayft curate` CLI, fresh process | {c['wall_s']} | {c['pairs_per_s']:,.0f} | everything: "
                     f"imports, local Ray start ({c['timing']['ray_init_s']} s), stage ({c['timing']['total_s']} s) |")
    if "baseline" in result:
        b = result["baseline"]
        lines.append(f"| single process + datasketch MinHashLSH | {b['wall_s']} | {b['pairs_per_s']:,.0f} | "
                     f"same filters, no Ray |")
    lines += ["", "| pipeline | filter | recall | precision | notes |", "|---|---|---|---|---|"]
    lines += _quality_rows("rayft", r["quality"])
    if "baseline" in result:
        lines += _quality_rows("baseline", result["baseline"]["quality"])
    print("\n".join(lines))
    print(f"load average before {result['load_before']}, after rayft {result['load_after_rayft']}"
          + (f", after baseline {result['load_after_baseline']}" if "baseline" in result else "")
          + (f", after CLI {result['load_after_cli']}" if "cli" in result else ""))


if __name__ == "__main__":
    main()
