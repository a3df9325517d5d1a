"""Streaming PCA (optionally whitened) for embeddings that do not fit in memory at full width.

Pass 1 accumulates the mean and the d x d scatter matrix chunk by chunk (float64,
O(d^2) memory: 2 MB at d=512); pass 2 projects each chunk. A million 512-d embeddings
(2 GB as float32) are never held at once; the reduced matrix is n x k float32
(128 MB at 1M x 32). The result is exact PCA, not an approximation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (CLIP embeddings are compared by cosine)."""
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def embeddings_from_arrow(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """list<float> / fixed_size_list / Ray tensor column -> float32 (n, d); rows must share d."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    n = len(arr)
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    if arr.null_count:
        raise ValueError(f"embedding column has {arr.null_count} null rows")
    if pa.types.is_fixed_size_list(arr.type):
        d = arr.type.list_size
        return arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(n, d)
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        offsets = arr.offsets.to_numpy()
        lens = np.diff(offsets)
        if lens.min() != lens.max():
            raise ValueError(f"embeddings have different lengths ({lens.min()}..{lens.max()})")
        flat = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        return flat.reshape(n, int(lens[0]))
    raise ValueError(f"embedding column has type {arr.type}; expected a list of floats")


class ScatterAccumulator:
    """Running mean and scatter of row chunks, shifted by the first chunk's mean for precision."""

    def __init__(self) -> None:
        self.n = 0
        self.ref: np.ndarray | None = None
        self.s1: np.ndarray | None = None
        self.s2: np.ndarray | None = None

    def add(self, x: np.ndarray) -> None:
        if len(x) == 0:
            return
        x = np.asarray(x, dtype=np.float32)
        if self.ref is None:
            self.ref = x.mean(axis=0, dtype=np.float64)
            d = x.shape[1]
            self.s1, self.s2 = np.zeros(d), np.zeros((d, d))
        y = x - self.ref.astype(np.float32)
        self.s1 += y.sum(axis=0, dtype=np.float64)
        self.s2 += (y.T @ y).astype(np.float64)  # float32 GEMM per chunk, float64 across chunks
        self.n += len(x)

    def covariance(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise ValueError("need at least 2 rows for PCA")
        m = self.s1 / self.n
        cov = (self.s2 - self.n * np.outer(m, m)) / (self.n - 1)
        return self.ref + m, cov


@dataclass
class PCAModel:
    mean: np.ndarray        # (d,)
    components: np.ndarray  # (k, d)
    scale: np.ndarray       # (k,) divisor per component (std when whitened, else 1)
    explained: np.ndarray   # (k,) explained variance ratio

    def transform(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float32) - self.mean.astype(np.float32)) @ self.components.T.astype(np.float32)
        return (z / self.scale.astype(np.float32)).astype(np.float32, copy=False)

    def summary(self) -> dict:
        return {"dims_in": int(self.mean.shape[0]), "dims_out": int(self.components.shape[0]),
                "explained_variance": round(float(self.explained.sum()), 4)}


def fit_pca(acc: ScatterAccumulator, k: int, whiten: bool) -> PCAModel:
    """PCA from accumulated statistics; k=0 (or k >= d) keeps every dimension (still centred)."""
    mean, cov = acc.covariance()
    w, v = np.linalg.eigh(cov)
    order = np.argsort(w)[::-1]
    w, v = np.clip(w[order], 0, None), v[:, order]
    d = len(w)
    k = d if k <= 0 or k >= d else k
    scale = np.sqrt(np.maximum(w[:k], 1e-12)) if whiten else np.ones(k)
    total = w.sum() if w.sum() > 0 else 1.0
    return PCAModel(mean=mean, components=v[:, :k].T.copy(), scale=scale, explained=w[:k] / total)
