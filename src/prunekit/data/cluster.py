"""Embeddings streamed from memory or a memmapped ``.npy``; spherical k-means (faiss); prototype scores; DBP complexity.

Memory stays bounded for 1M x 384 float32 inputs: k-means trains on a sample, every pass over all
rows reads fixed-size chunks, and a file is mapped only for the duration of one read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import check_choice
from .checks import check_embeddings, check_finite_rows, check_positive_int, open_npy
from .scores import DATA_SCORES

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 << 20  # budget for one chunk of rows or one block of similarities


class Embeddings:
    """``(N, d)`` float embeddings from an array, a tensor, an ``np.memmap`` or a ``.npy`` path (read in chunks)."""

    def __init__(self, source: Any, dim: int | None = None, name: str = "embeddings") -> None:
        self.path: Path | None = None
        self.array: np.ndarray | None = None
        if isinstance(source, Embeddings):
            self.path, self.array, self._offset = source.path, source.array, source._offset
            self.shape, self.dtype = source.shape, source.dtype
        elif isinstance(source, (str, os.PathLike)):
            self._from_memmap(open_npy(source, name, ndim=2, mmap=True))
        elif isinstance(source, np.memmap) and source.filename is not None and source.flags.c_contiguous:
            self._from_memmap(source)
        else:
            arr = source.detach().cpu().numpy() if torch.is_tensor(source) else np.asarray(source)
            self.array, self.shape, self.dtype = arr, tuple(arr.shape), arr.dtype
        check_embeddings(self, dim, name)
        self.n, self.d = int(self.shape[0]), int(self.shape[1])
        if not isinstance(source, Embeddings):  # checked once, when first read (faiss fails in C++ on NaN)
            check_finite_rows(self.chunks(), f"{name} file {str(self.path)!r}" if self.path is not None else name)

    def _from_memmap(self, mm: np.memmap) -> None:
        if not mm.flags.c_contiguous or mm.ndim != 2:
            raise ValueError(f"a memmapped embeddings file must be a C-ordered 2-D array, got shape {mm.shape}")
        self.path, self._offset = Path(mm.filename), int(mm.offset)
        self.shape, self.dtype = tuple(mm.shape), mm.dtype

    def chunk_rows(self, per_row_bytes: int | None = None) -> int:
        """Rows per chunk so that one chunk costs about ``CHUNK_BYTES``."""
        return max(256, CHUNK_BYTES // max(1, per_row_bytes or self.d * 4))

    def chunks(self, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, float32 rows)`` chunks in order; the file is mapped for one chunk at a time."""
        rows = rows or self.chunk_rows()
        for start in range(0, self.n, rows):
            if self.array is not None:
                yield start, np.array(self.array[start:start + rows], dtype=np.float32)
            else:
                mm = self._window(start, rows)
                block = np.array(mm, dtype=np.float32)
                del mm
                yield start, block

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows at sorted indices ``idx`` as a float32 copy ``(len(idx), d)``.

        A file is read one window of ``chunk_rows()`` rows at a time, each window mapped only while it
        is read, so the mapped pages never exceed one window whatever the spread of ``idx``.
        """
        if self.array is not None:
            return np.array(self.array[idx], dtype=np.float32)
        out = np.empty((len(idx), self.d), np.float32)
        rows = self.chunk_rows()
        cuts = np.searchsorted(idx, np.arange(0, self.n + rows, rows))
        for w, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
            if a < b:
                mm = self._window(w * rows, rows)
                out[a:b] = mm[idx[a:b] - w * rows]
                del mm
        return out

    def _window(self, start: int, rows: int) -> np.memmap:
        """Map rows ``[start, start + rows)`` of the file (read-only)."""
        offset = self._offset + start * self.d * self.dtype.itemsize
        shape = (min(rows, self.n - start), self.d)
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=offset, shape=shape)


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), in place, float32 ``(n, d)``."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, np.maximum(norms, 1e-12), out=x)
    return x


def nearest_centroid(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest unit centroid by cosine for unit rows ``x (n, d)``: ``(index (n,), cosine (n,))``."""
    sims = x @ centroids.T  # (n, k)
    best = sims.argmax(1)
    return best.astype(np.int64), sims[np.arange(len(x)), best].astype(np.float32)


@dataclass
class Clusters:
    """Spherical k-means result: unit ``centroids (k, d)``, ``assign (N,)`` and ``cosine (N,)`` to own centroid."""

    centroids: np.ndarray
    assign: np.ndarray
    cosine: np.ndarray

    @property
    def k(self) -> int:
        """Number of clusters."""
        return int(self.centroids.shape[0])

    def sizes(self) -> np.ndarray:
        """Members per cluster ``(k,)``."""
        return np.bincount(self.assign, minlength=self.k)


def train_kmeans(emb: Embeddings, n_clusters: int, seed: int = 0, niter: int = 20,
                 points_per_centroid: int = 256) -> np.ndarray:
    """Unit centroids ``(k, d)`` of spherical k-means (faiss) trained on a seeded sample of the rows."""
    import faiss

    k = check_positive_int(n_clusters, "n_clusters")
    if k > emb.n:
        raise ValueError(f"n_clusters must be at most the number of examples ({emb.n}), got {k}")
    rng = np.random.default_rng(seed)
    n_train = min(emb.n, k * points_per_centroid)
    idx = np.sort(rng.choice(emb.n, size=n_train, replace=False)) if n_train < emb.n else np.arange(emb.n)
    x = normalize(emb.take(idx))
    km = faiss.Kmeans(emb.d, k, niter=niter, seed=int(seed) + 1, spherical=True,
                      max_points_per_centroid=points_per_centroid, min_points_per_centroid=1, verbose=False)
    km.train(x)
    return normalize(np.array(km.centroids, dtype=np.float32))


class NearestRows:
    """Row function ``rows -> {"assign", "cosine"}`` for a fixed set of unit centroids (picklable for Ray)."""

    def __init__(self, centroids: np.ndarray) -> None:
        self.centroids = centroids

    def __call__(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        b, c = nearest_centroid(normalize(np.array(rows, dtype=np.float32)), self.centroids)
        return {"assign": b, "cosine": c}


def assign(emb: Embeddings, centroids: np.ndarray, backend: str = "local",
           concurrency: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stream all rows and return each row's nearest centroid ``(N,)`` and cosine to it ``(N,)``."""
    check_embeddings(centroids, emb.d, "centroids")
    check_choice(backend, "backend", ("local", "ray"))
    best = np.empty(emb.n, np.int64)
    cos = np.empty(emb.n, np.float32)
    fn = NearestRows(np.ascontiguousarray(centroids, dtype=np.float32))
    rows = emb.chunk_rows(per_row_bytes=4 * (emb.d + 2 * len(centroids)))
    if backend == "ray":
        from .ray_backend import map_rows

        for res in map_rows(fn, emb, batch_size=min(rows, 8192), concurrency=concurrency):
            best[res["id"]], cos[res["id"]] = res["assign"], res["cosine"]
        return best, cos
    for start, block in emb.chunks(rows):
        res = fn(block)
        best[start:start + len(block)], cos[start:start + len(block)] = res["assign"], res["cosine"]
    return best, cos


def kmeans(embeddings: Any, n_clusters: int, seed: int = 0, niter: int = 20, backend: str = "local",
           concurrency: int | None = None) -> Clusters:
    """Spherical k-means of the rows (trained on a sample) and the assignment of every row (streamed)."""
    check_choice(backend, "backend", ("local", "ray"))
    emb = Embeddings(embeddings)
    centroids = train_kmeans(emb, n_clusters, seed=seed, niter=niter)
    a, c = assign(emb, centroids, backend=backend, concurrency=concurrency)
    return Clusters(centroids, a, c)


@DATA_SCORES.register("prototype")
def prototype(embeddings: Any, n_clusters: int = 10, seed: int = 0, niter: int = 20,
              clusters: Clusters | None = None, backend: str = "local", concurrency: int | None = None) -> Tensor:
    """Self-supervised prototype score: cosine distance to the nearest k-means centroid (Sorscher et al. 2022).

    Sorscher et al. 2022, "Beyond neural scaling laws", Sec. 5: embed, k-means, distance to the
    nearest prototype; far = hard. ``backend="ray"`` assigns rows on Ray (same values).
    """
    if clusters is None:
        clusters = kmeans(embeddings, n_clusters, seed=seed, niter=niter, backend=backend, concurrency=concurrency)
    return torch.from_numpy(1.0 - clusters.cosine.astype(np.float64))


def cluster_complexity(clusters: Clusters, n_neighbors: int = 20) -> Tensor:
    """DBP complexity ``C_j = d_inter(j) * d_intra(j)`` per cluster (Abbas et al. 2024, Sec. 3, Eq. 1-2).

    ``d_intra``: mean cosine distance of members to their centroid; ``d_inter``: mean cosine distance
    from the centroid to its ``n_neighbors`` nearest other centroids. Empty clusters get 0.
    """
    k = clusters.k
    sizes = clusters.sizes()
    dist_sum = np.bincount(clusters.assign, weights=1.0 - clusters.cosine.astype(np.float64), minlength=k)
    d_intra = np.divide(dist_sum, sizes, out=np.zeros(k), where=sizes > 0)
    if k == 1:
        return torch.zeros(1, dtype=torch.float64)
    cc = clusters.centroids.astype(np.float64) @ clusters.centroids.T.astype(np.float64)  # (k, k)
    np.fill_diagonal(cc, -np.inf)
    nn_ = min(n_neighbors, k - 1)
    top = -np.sort(-cc, axis=1)[:, :nn_]  # (k, nn) largest cosines to other centroids
    d_inter = (1.0 - top).mean(1)
    return torch.from_numpy(d_inter * d_intra)
