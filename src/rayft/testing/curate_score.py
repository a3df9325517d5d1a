"""Score a curate output against ``testing.pairs.generate``'s planted truth: precision/recall per filter.

Pure (no Ray); used by tests and ``benchmarks/curate_bench.py``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq


def load_truth(path: str | Path) -> dict[tuple[str, int], dict]:
    with open(path, encoding="utf-8") as f:
        return {(t["file"], t["line"]): t for t in map(json.loads, f)}


# --------------------------------------------------------------------------- scoring

def read_outputs(out_dir: str | Path) -> tuple[dict, dict]:
    """({(file, line): kept row}, {(file, line): reject line}) over every committed output."""
    out = Path(out_dir)
    kept, rejects = {}, {}
    for p in sorted(out.glob("*/*/part-*.parquet")):
        for row in pq.read_table(p).to_pylist():
            row["split"] = p.parent.name
            kept[(row["file"], row["line"])] = row
    for p in sorted((out / "rejects").glob("*.jsonl")):
        with open(p, encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                rejects[(r["file"], r["line"])] = r
    return kept, rejects


def output_keys(out_dir: str | Path) -> tuple[list, list]:
    """Every kept row as (file name, line, split) and every reject as (file name, line, filter),
    sorted lists, not dicts (``read_outputs``): a row written twice shows up twice."""
    out = Path(out_dir)
    kept = sorted((Path(r["file"]).name, r["line"], p.parent.name) for p in out.glob("*/*/part-*.parquet")
                  for r in pq.read_table(p).select(["file", "line"]).to_pylist())
    rej = []
    for p in (out / "rejects").glob("*.jsonl"):
        with open(p, encoding="utf-8") as f:
            rej += [(Path(r["file"]).name, r["line"], r["filter"]) for r in map(json.loads, f)]
    return kept, sorted(rej)


def true_jaccards(truth: dict, ngram: int = 5, fields=("system", "history", "prompt", "response")) -> dict:
    """Exact character n-gram Jaccard of every planted near copy against its original."""
    from ..data.formats import read_file
    from ..curate import dedup as dd
    from ..curate.config import NormalizeCfg
    from ..curate.filters import normalize_str

    ncfg = NormalizeCfg()
    need = {k for k, t in truth.items() if t["kind"] == "near_dup"}
    need |= {tuple(truth[k]["orig"]) for k in need}
    texts = {}
    for path in sorted({f for f, _ in need}):
        for row in read_file(path).rows:
            key = (row["file"], row["line"])
            if key in need:
                n = {f: normalize_str(row[f], ncfg) if f != "history" else row[f] for f in ("system", "history", "prompt", "response")}
                texts[key] = dd.dedup_text(n["system"], n["history"], n["prompt"], n["response"], fields)
    return {k: dd.jaccard(texts[k], texts[tuple(truth[k]["orig"])], ngram)
            for k, t in truth.items() if t["kind"] == "near_dup" and k in texts and tuple(t["orig"]) in texts}


def _pr(tp: int, fp: int, fn: int) -> dict:
    return {"tp": tp, "fp": fp, "fn": fn, "precision": round(tp / (tp + fp), 4) if tp + fp else 1.0,
            "recall": round(tp / (tp + fn), 4) if tp + fn else 1.0}


def score(out_dir: str | Path, truth_path: str | Path, threshold: float = 0.8, ngram: int = 5) -> dict:
    """Precision/recall of each filter of a curate output against the planted truth."""
    truth = load_truth(truth_path)
    kept, rejects = read_outputs(out_dir)
    flt = {k: rejects[k]["filter"] if k in rejects else ("kept" if k in kept else "missing") for k in truth}
    res: dict = {"rows": len(truth), "missing": sum(v == "missing" for v in flt.values()),
                 "in_both": len(set(kept) & set(rejects))}

    def masked(k, kind) -> bool:
        row = kept.get(k)
        return bool(row) and f"[{kind.upper()}]" in (row["prompt"] + row["response"] + row["system"] + row["history"])

    def flagged(k) -> bool:
        return flt[k] == "secrets" or any(masked(k, s) for s in ("password", "card", "cn_id", "phone", "email", "api_key"))

    sec = {}
    for kind in ("password", "card", "cn_id", "phone", "email", "api_key"):
        ks = [k for k, t in truth.items() if t.get("secret") == kind]
        sec[kind] = {"planted": len(ks), "caught": sum(flt[k] == "secrets" or masked(k, kind) for k in ks)}
        sec[kind]["recall"] = round(sec[kind]["caught"] / max(len(ks), 1), 4)
    neg = [k for k, t in truth.items() if t["kind"] in ("clean", "decoy", "exact_dup", "near_dup")]
    decoys = [k for k in neg if truth[k]["kind"] == "decoy"]
    by_decoy: dict = {}
    for k in decoys:
        d = by_decoy.setdefault(truth[k]["decoy"], {"rows": 0, "flagged": 0})
        d["rows"] += 1
        d["flagged"] += flagged(k)
    pos = [k for k, t in truth.items() if t["kind"] == "secret"]
    tp = sum(flagged(k) for k in pos)
    fp = sum(flagged(k) for k in neg)
    res["secrets"] = {"by_kind": sec, **_pr(tp, fp, len(pos) - tp),
                      "fp_rate_negatives": round(fp / max(len(neg), 1), 4),
                      "fp_rate_decoys": round(sum(flagged(k) for k in decoys) / max(len(decoys), 1), 4),
                      "decoys": by_decoy}
    lv = [k for k, t in truth.items() if t["kind"] == "low_value"]
    tp = sum(flt[k] == "low_value" for k in lv)
    res["low_value"] = _pr(tp, sum(v == "low_value" for k, v in flt.items() if truth[k]["kind"] != "low_value"), len(lv) - tp)
    ex = [k for k, t in truth.items() if t["kind"] == "exact_dup"]
    tp = sum(flt[k] == "exact_dedup" for k in ex)
    res["exact_dedup"] = _pr(tp, sum(v == "exact_dedup" for k, v in flt.items() if truth[k]["kind"] != "exact_dup"),
                             len(ex) - tp)
    jac = true_jaccards(truth, ngram)
    hi = [k for k, j in jac.items() if j >= threshold]
    tp = sum(flt[k] == "near_dedup" for k in hi)
    false_merge = [k for k, v in flt.items() if v == "near_dedup" and jac.get(k, 0.0) < threshold]
    res["near_dedup"] = {**_pr(tp, len(false_merge), len(hi) - tp), "planted": len(jac), "planted_at_threshold": len(hi),
                         "false_merges": len(false_merge),
                         "false_merge_rate": round(len(false_merge) / max(sum(v == "near_dedup" for v in flt.values()), 1), 4),
                         "below_threshold_kept": sum(flt[k] == "kept" for k, j in jac.items() if j < threshold)}
    bad = [k for k, t in truth.items() if t["kind"] == "bad"]
    res["bad"] = {"planted": len(bad), "removed": sum(flt[k] in ("read", "normalize") for k in bad)}
    res["clean_kept"] = round(sum(flt[k] == "kept" for k, t in truth.items() if t["kind"] in ("clean", "decoy"))
                              / max(sum(t["kind"] in ("clean", "decoy") for t in truth.values()), 1), 4)
    return res
