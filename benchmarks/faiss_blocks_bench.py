"""faiss exact-search block sizes for the sharded HDBSCAN's per-shard kNN (one thread, k=21).

    .venv/bin/python benchmarks/faiss_blocks_bench.py --sizes 12400 20000 --reps 4

Shards are planted 512-d embeddings (rayft.testing.embeddings) reduced to 32 whitened PCA
dimensions, as `rayft frames cluster` searches them. Each block setting (queries x database
points per distance block, faiss's ``distance_compute_blas_*_bs``) searches the same shard
``--reps`` times; the median is printed side by side with faiss's default (4096 x 1024) and the
fraction of neighbour ids that agree with the default's.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def shard(m: int) -> np.ndarray:
    from rayft.frames.cluster.reduce import ScatterAccumulator, fit_pca, l2_normalize
    from rayft.testing.embeddings import PlantedSpec, planted

    x, _ = planted(PlantedSpec(n=m, dim=512, n_clusters=20, min_size=50, seed=1))
    x = l2_normalize(x.astype(np.float32))
    acc = ScatterAccumulator()
    acc.add(x)
    return np.ascontiguousarray(fit_pca(acc, 32, True).transform(x))


def main() -> None:
    import faiss

    from rayft.frames.cluster.hdbscan_scale import BLAS_BLOCKS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[12_400, 20_000])
    ap.add_argument("--reps", type=int, default=4)
    a = ap.parse_args()
    faiss.omp_set_num_threads(1)
    settings = {"faiss default": (4096, 1024), "rayft (BLAS_BLOCKS)": tuple(BLAS_BLOCKS)}
    print("| shard points | blocks | median search (s) | ids equal to default |\n|---|---|---|---|")
    for m in a.sizes:
        x = shard(m)
        times, ids = {}, {}
        for _ in range(a.reps):
            for name, (qb, db) in settings.items():
                faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs = qb, db
                t = time.time()
                index = faiss.IndexFlatL2(x.shape[1])
                index.add(x)
                ids[name] = index.search(x, 21)[1]
                times.setdefault(name, []).append(time.time() - t)
        for name, (qb, db) in settings.items():
            same = float((ids[name] == ids["faiss default"]).mean())
            print(f"| {m:,} | {name}: {qb} x {db} | {np.median(times[name]):.3f} | {same:.5f} |")


if __name__ == "__main__":
    main()
