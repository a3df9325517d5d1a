"""Clustering benchmark: `rayft frames cluster` on planted 512-d CLIP-like embeddings.

    NUMBA_CACHE_DIR=.cache/numba .venv/bin/python benchmarks/cluster_bench.py \
        --sizes 100000 1000000 --flat-hdbscan 20000 --work benchmarks/out/cluster

For every size: planted embeddings (power-law cluster sizes + 20 % noise, see
rayft.testing.embeddings) are written once as Parquet (path, episode, embedding), then each
method runs in a FRESH subprocess through the same code the CLI runs (streaming PCA +
HDBSCAN, labels.parquet), so its wall time and peak RSS (os.wait4) are its own:

* ``sharded``   rayft's bounded-memory path (cluster.method=sharded), searches in this process
* ``sharded-ray`` the same with the per-shard neighbour searches as Ray tasks
                (cluster.ray_tasks=on; a local Ray started in the child; the tasks' worker
                peak RSS is reported as hdbscan.knn_task_peak_rss_gb)
* ``fast-flat`` one fast_hdbscan call over every point (cluster.method=flat)
* ``hdbscan``   classic flat ``hdbscan.HDBSCAN`` (boruvka_kdtree) on the same PCA output,
                only at sizes <= --flat-hdbscan (it needs ~500 s for 100k points here)

ARI is against the planted truth (noise = its own label -1, as HDBSCAN's). Prints a
Markdown table for benchmarks/RESULTS.md and writes <work>/results.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".cache" / "numba"))

import numpy as np  # noqa: E402


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def spec_for(n: int, seed: int = 0):
    from rayft.testing.embeddings import PlantedSpec

    return PlantedSpec(n=n, dim=512, n_clusters=100, noise_frac=0.2, min_size=50, seed=seed)


def write_dataset(n: int, root: Path, rows_per_file: int = 100_000) -> Path:
    """Planted embeddings -> root/emb/part-*.parquet and root/truth.npy (cached)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rayft.testing.embeddings import iter_planted

    if (root / "_READY").exists():
        return root
    (root / "emb").mkdir(parents=True, exist_ok=True)
    truth, i = [], 0
    for part, (x, lab) in enumerate(iter_planted(spec_for(n), chunk=rows_per_file)):
        m, d = x.shape
        ids = np.arange(i, i + m)
        emb = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), d)
        pq.write_table(pa.table({"path": [f"synthetic/{j:07d}.jpg" for j in ids],
                                 "episode": [f"ep{j % 214:03d}" for j in ids], "embedding": emb}),
                       root / "emb" / f"part-{part:05d}.parquet")
        truth.append(lab)
        i += m
    np.save(root / "truth.npy", np.concatenate(truth))
    (root / "_READY").write_text("ok")
    return root


def ari_from_labels(out: Path, truth: np.ndarray) -> tuple[float, int, float]:
    import pyarrow.parquet as pq
    from sklearn.metrics import adjusted_rand_score

    t = pq.read_table(out / "labels.parquet", columns=["path", "label"])
    idx = np.array([int(p[10:17]) for p in t.column("path").to_pylist()])
    lab = t.column("label").to_numpy()
    return float(adjusted_rand_score(truth[idx], lab)), int(lab.max() + 1), float((lab < 0).mean())


def one(method: str, data: Path, out: Path, overrides: list[str]) -> dict:
    """Runs inside the child process: one method on one dataset."""
    from rayft.frames.cluster.run import run_cluster
    from rayft.config import load
    from rayft.frames.config import FramesConfig

    truth = np.load(data / "truth.npy")
    t0 = time.time()
    if method in ("sharded", "sharded-ray", "fast-flat"):
        extra = []
        if method == "sharded-ray":  # per-shard kNN as Ray tasks on a local Ray of this machine's cores
            extra = ["cluster.ray_tasks=on"]
        elif method == "sharded":
            extra = ["cluster.ray_tasks=off"]
        cfg = load(FramesConfig, REPO / "configs" / "frames.yaml",
                   [f"cluster.input={data / 'emb'}", f"cluster.output={out}",
                    f"cluster.method={'flat' if method == 'fast-flat' else 'sharded'}", *extra, *overrides])
        run_cluster(cfg)
        info = json.loads((out / "clusters.json").read_text())
        ari, k, noise = ari_from_labels(out, truth)
        hd = {key: v for key, v in info["hdbscan"].items() if key != "shard_stats"}
        return {"seconds": round(time.time() - t0, 1), "reduce_seconds": info["reduce_seconds"],
                "ari": round(ari, 4), "clusters": k, "noise_frac": round(noise, 4), "hdbscan": hd}
    # classic hdbscan on the same streaming PCA output as rayft's path
    import hdbscan

    from rayft.frames.cluster.hdbscan_scale import relabel_by_size
    from rayft.frames.cluster.reduce import ScatterAccumulator, fit_pca
    from rayft.frames.cluster.run import iter_embeddings, parquet_files

    cfg = load(FramesConfig, REPO / "configs" / "frames.yaml", [])
    c = cfg.cluster
    files = parquet_files(data / "emb")
    acc = ScatterAccumulator()
    for x, _, _ in iter_embeddings(files, c.read_batch):
        acc.add(x)
    pca = fit_pca(acc, c.pca_dims, c.whiten)
    z = np.concatenate([pca.transform(x) for x, _, _ in iter_embeddings(files, c.read_batch)])
    t1 = time.time()
    lab = hdbscan.HDBSCAN(min_cluster_size=c.min_cluster_size, min_samples=c.min_samples,
                          cluster_selection_method=c.selection, core_dist_n_jobs=os.cpu_count()).fit_predict(z)
    lab = relabel_by_size(np.asarray(lab, dtype=np.int64), c.min_cluster_size)
    from sklearn.metrics import adjusted_rand_score

    return {"seconds": round(time.time() - t0, 1), "reduce_seconds": round(t1 - t0, 1),
            "ari": round(float(adjusted_rand_score(truth, lab)), 4), "clusters": int(lab.max() + 1),
            "noise_frac": round(float((lab < 0).mean()), 4)}


def run_child(method: str, data: Path, out: Path, timeout: float, overrides: list[str]) -> dict:
    """Fresh interpreter per measurement (numba caches warm from disk, nothing
    shared in memory); the child reports its own peak RSS (VmHWM; ru_maxrss beside it)."""
    cmd = [sys.executable, __file__, "--one", method, "--data", str(data), "--out", str(out), "--set", *overrides]
    t0 = time.time()
    # own session: on timeout the whole group goes, including hdbscan's joblib/loky workers
    # (they hold the stdout pipe, and killing the child alone left them computing)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, text=True, start_new_session=True)
    try:
        stdout, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        return {"method": method, "error": f"timeout after {timeout:.0f}s", "seconds": round(time.time() - t0, 1)}
    line = (stdout.strip().splitlines() or ["{}"])[-1]
    res = json.loads(line) if line.startswith("{") else {"error": f"exit code {p.returncode}"}
    res.update(method=method, wall_seconds=round(time.time() - t0, 1))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--methods", nargs="+", default=["sharded", "fast-flat"])
    ap.add_argument("--flat-hdbscan", type=int, default=20_000,
                    help="also run classic hdbscan (and the other methods) at this size; 0 = skip")
    ap.add_argument("--work", default=str(REPO / "benchmarks" / "out" / "cluster"))
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides for the rayft methods, e.g. cluster.shard_size=50000")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every size x method this many times, the method order reversed on "
                         "every other round (this machine's speed drifts by 15-30 %% between runs); "
                         "prints each round's time ratio of the first method to the others")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        import resource

        res = one(a.one, Path(a.data), Path(a.out), a.set)
        # VmHWM (this process image's peak, reset by exec); ru_maxrss is kept across execve on
        # Linux, so it would start at the parent's size when the parent had just built the data
        hwm = [ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM:")]
        res["peak_rss_gb"] = round(int(hwm[0].split()[1]) * 1024 / 1e9, 3) if hwm else \
            round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 3)
        res["ru_maxrss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 3)
        print(json.dumps(res), flush=True)
        return
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    plan = []
    if a.flat_hdbscan:
        plan += [(a.flat_hdbscan, m) for m in [*a.methods, "hdbscan"]]
    for r in range(a.repeat):
        plan += [(n, m, r) for n in a.sizes for m in (a.methods if r % 2 == 0 else a.methods[::-1])]
    plan = [p if len(p) == 3 else (*p, 0) for p in plan]
    results = []
    for n, method, rnd in plan:
        t = time.time()
        data = write_dataset(n, work / f"data_{n}")
        print(f"[{n}] data ready ({time.time() - t:.0f}s); running {method}; load {load_avg()}",
              file=sys.stderr, flush=True)
        out = work / f"run_{n}_{method}"
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        res = run_child(method, data, out, a.timeout, a.set)
        res.update(overrides=a.set, n=n, round=rnd, load_avg=load_avg(), date=time.strftime("%Y-%m-%d %H:%M"))
        results.append(res)
        print(json.dumps(res), flush=True)
        with open(work / "results.jsonl", "a") as f:
            f.write(json.dumps(res) + "\n")
    print("\n| points | method | time (s) | of which PCA (s) | peak RSS (GB) | ARI | clusters | noise |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['n']:,} | {r['method']} | {r.get('seconds', '')} | | | {r['error']} | | |")
            continue
        print(f"| {r['n']:,} | {r['method']} | {r['seconds']} | {r['reduce_seconds']} | {r['peak_rss_gb']} | "
              f"{r['ari']} | {r['clusters']} | {r['noise_frac']} |")

    ok = [r for r in results if "error" not in r]
    for n in a.sizes:
        for m in a.methods[1:]:
            ratios = []
            for rnd in range(a.repeat):
                t = {r["method"]: r["seconds"] for r in ok if r["n"] == n and r.get("round") == rnd}
                if a.methods[0] in t and m in t:
                    ratios.append(round(t[a.methods[0]] / t[m], 3))
            if ratios:
                print(f"\n{n:,} points: {a.methods[0]} / {m} wall time per round: {ratios} "
                      f"(median {float(np.median(ratios)):.3f})")


if __name__ == "__main__":
    main()
