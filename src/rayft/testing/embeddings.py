"""CLIP-like synthetic embeddings with planted clusters (tests and benchmarks).

Real CLIP image embeddings are unit vectors inside a cone (every pair has a positive
cosine) and a recurring character forms a tight blob in it. We plant ``n_clusters``
blobs of power-law sizes around centres drawn in that cone, plus ``noise_frac`` of
points that belong to no character (backgrounds, transitions), drawn from the same
cone. Ground truth uses -1 for noise, like HDBSCAN.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np


@dataclass
class PlantedSpec:
    n: int
    dim: int = 512
    n_clusters: int = 100
    noise_frac: float = 0.2
    min_size: int = 50          # smallest planted cluster
    zipf: float = 1.0           # size ~ rank^-zipf (main characters are big, extras small)
    spread: tuple = (0.35, 0.6)  # per-cluster radius: cos(point, centre) ~ 1/sqrt(1+s^2)
    cone: float = 1.0           # weight of the shared direction (cone width)
    seed: int = 0


def cluster_sizes(spec: PlantedSpec) -> np.ndarray:
    """Sizes summing to n * (1 - noise_frac), each >= min_size, power-law over rank."""
    n_in = int(round(spec.n * (1 - spec.noise_frac)))
    k = spec.n_clusters
    if k * spec.min_size > n_in:
        raise ValueError(f"{k} clusters of >= {spec.min_size} do not fit in {n_in} clustered points")
    w = 1.0 / np.arange(1, k + 1) ** spec.zipf
    extra = n_in - k * spec.min_size
    sizes = spec.min_size + np.floor(w / w.sum() * extra).astype(np.int64)
    sizes[0] += n_in - sizes.sum()
    return sizes


def _cone_points(rng: np.random.Generator, common: np.ndarray, m: int, cone: float) -> np.ndarray:
    d = common.shape[0]
    x = cone * common[None, :] + rng.standard_normal((m, d)).astype(np.float32) / np.sqrt(d)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def planted_truth(spec: PlantedSpec) -> np.ndarray:
    """The label of every point (shuffled), -1 for noise."""
    rng = np.random.default_rng(spec.seed)
    sizes = cluster_sizes(spec)
    labels = np.full(spec.n, -1, dtype=np.int64)
    labels[: sizes.sum()] = np.repeat(np.arange(len(sizes)), sizes)
    rng.shuffle(labels)
    return labels


def iter_planted(spec: PlantedSpec, chunk: int = 100_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (embeddings float32 (m, dim), labels) chunks; memory is O(chunk * dim)."""
    rng = np.random.default_rng(spec.seed + 1)
    common = rng.standard_normal(spec.dim).astype(np.float32)
    common /= np.linalg.norm(common)
    centres = _cone_points(rng, common, spec.n_clusters, spec.cone)
    radii = rng.uniform(*spec.spread, size=spec.n_clusters).astype(np.float32)
    labels = planted_truth(spec)
    for start in range(0, spec.n, chunk):
        lab = labels[start:start + chunk]
        x = _cone_points(rng, common, len(lab), spec.cone)  # noise rows keep these
        inside = lab >= 0
        if inside.any():
            li = lab[inside]
            g = rng.standard_normal((len(li), spec.dim)).astype(np.float32) / np.sqrt(spec.dim)
            y = centres[li] + radii[li, None] * g
            x[inside] = y / np.linalg.norm(y, axis=1, keepdims=True)
        yield x.astype(np.float32), lab


def planted(spec: PlantedSpec) -> tuple[np.ndarray, np.ndarray]:
    """All points at once (small n only)."""
    xs, ls = zip(*iter_planted(spec))
    return np.concatenate(xs), np.concatenate(ls)
