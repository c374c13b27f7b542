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
    """``(N, d)`` float embeddings: an array, a tensor, an ``np.memmap``, a ``.npy`` path, or a folder / list of
    ``.npy`` shards (rows concatenated in sorted file-name order); files are read in chunks, never whole.
    """

    def __init__(self, source: Any, dim: int | None = None, name: str = "embeddings") -> None:
        self.path: Path | None = None
        self.array: np.ndarray | None = None
        self.files: list[tuple[str, int, int]] = []  # (path, header offset, rows) per shard
        if isinstance(source, Embeddings):
            self.__dict__.update(source.__dict__)
            check_embeddings(self, dim, name)
            return
        if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
            source = sorted(Path(source).glob("*.npy"))
            if not source:
                raise FileNotFoundError(f"{name} folder holds no .npy shards")
        if isinstance(source, (list, tuple)) and source and all(isinstance(p, (str, os.PathLike)) for p in source):
            self._from_shards([open_npy(p, name, ndim=2, mmap=True) for p in source], name)
        elif isinstance(source, (str, os.PathLike)):
            self._from_shards([open_npy(source, name, ndim=2, mmap=True)], name)
        elif isinstance(source, np.memmap) and source.filename is not None and source.flags.c_contiguous:
            self._from_shards([source], name)
        else:
            arr = source.detach().cpu().numpy() if torch.is_tensor(source) else np.asarray(source)
            self.array, self.shape, self.dtype = arr, tuple(arr.shape), arr.dtype
        check_embeddings(self, dim, name)
        self.n, self.d = int(self.shape[0]), int(self.shape[1])
        self.starts = np.r_[0, np.cumsum([f[2] for f in self.files])].astype(np.int64)
        where = f"{name} file {str(self.path)!r}" if self.path is not None else name
        check_finite_rows(self.chunks(), where)  # checked once, when first read (faiss fails in C++ on NaN)

    @classmethod
    def trusted(cls, array: np.ndarray) -> Embeddings:
        """Wrap an array already checked by an ``Embeddings`` (no finiteness pass; for Ray workers)."""
        self = cls.__new__(cls)
        self.path, self.array, self.files = None, array, []
        self.shape, self.dtype = tuple(array.shape), array.dtype
        self.n, self.d = int(self.shape[0]), int(self.shape[1])
        self.starts = np.zeros(1, np.int64)
        return self

    @property
    def _offset(self) -> int:
        return self.files[0][1] if self.files else 0

    def _from_shards(self, maps: list[np.memmap], name: str) -> None:
        for mm in maps:
            if not mm.flags.c_contiguous or mm.ndim != 2:
                raise ValueError(f"a memmapped {name} file must be a C-ordered 2-D array, got shape {mm.shape}")
        widths, dtypes = {mm.shape[1] for mm in maps}, {mm.dtype for mm in maps}
        if len(widths) > 1 or len(dtypes) > 1:
            raise ValueError(f"{name} shards must share width and dtype, got widths {sorted(widths)} and dtypes "
                             f"{sorted(map(str, dtypes))}")
        self.files = [(str(Path(mm.filename).resolve()), int(mm.offset), int(mm.shape[0])) for mm in maps]
        self.path = Path(self.files[0][0]) if len(maps) == 1 else Path(self.files[0][0]).parent
        self.shape, self.dtype = (sum(f[2] for f in self.files), maps[0].shape[1]), maps[0].dtype

    def chunk_rows(self, per_row_bytes: int | None = None) -> int:
        """Rows per chunk so that one chunk costs about ``CHUNK_BYTES``."""
        return max(256, CHUNK_BYTES // max(1, per_row_bytes or self.d * 4))

    def chunks(self, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, float32 rows)`` chunks in order (a chunk never spans two shards); one window mapped at a time."""
        rows = rows or self.chunk_rows()
        if self.array is not None:
            for start in range(0, self.n, rows):
                yield start, np.array(self.array[start:start + rows], dtype=np.float32)
            return
        for f, (_, _, m) in enumerate(self.files):
            for start in range(0, m, rows):
                mm = self._window(f, start, rows)
                block = np.array(mm, dtype=np.float32)
                del mm
                yield int(self.starts[f]) + start, block

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows at sorted indices ``idx`` as a float32 copy ``(len(idx), d)``.

        A file is read one window of ``chunk_rows()`` rows at a time, each window mapped only while it
        is read, so the mapped pages never exceed one window whatever the spread of ``idx``.
        """
        idx = np.asarray(idx, np.int64)
        if self.array is not None:
            return np.array(self.array[idx], dtype=np.float32)
        out = np.empty((len(idx), self.d), np.float32)
        rows = self.chunk_rows()
        for f, (_, _, m) in enumerate(self.files):
            lo, hi = np.searchsorted(idx, [self.starts[f], self.starts[f + 1]])
            local = idx[lo:hi] - self.starts[f]
            cuts = np.searchsorted(local, np.arange(0, m + rows, rows))
            for w, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
                if a < b:
                    mm = self._window(f, w * rows, rows)
                    out[lo + a:lo + b] = mm[local[a:b] - w * rows]
                    del mm
        return out

    def _window(self, f: int, start: int, rows: int) -> np.memmap:
        """Map rows ``[start, start + rows)`` of shard ``f`` (read-only)."""
        path, offset, m = self.files[f]
        shape = (min(rows, m - start), self.d)
        return np.memmap(path, dtype=self.dtype, mode="r", offset=offset + start * self.d * self.dtype.itemsize,
                         shape=shape)


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


BOUND_SLACK = 1e-4  # absorbs float32 rounding of the cosines in the exact cross-cluster bound


class BoundaryRows:
    """Row function ``rows -> entries``: each row's own cluster and the clusters where a partner may lie.

    Output columns ``row`` (position in ``rows``), ``cluster``, ``cosine``, ``own`` (1: the row's own
    cluster, nearest centroid unless ``known`` is given; 0: another cluster that passes the bound of
    ``semdedup``'s docstring for unit partners within Euclidean (chord) ``radius``: on the sphere the
    bound's radius is ``sin t = radius sqrt(1 - radius^2 / 4)``, ``t`` the partner angle). Picklable for Ray.
    """

    def __init__(self, centroids: np.ndarray, radius: float | None) -> None:
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)  # (k, d)
        self.radius = radius
        self.side_radius = None if radius is None else float(radius) * float(np.sqrt(max(0.0, 1 - radius**2 / 4)))
        k = len(self.centroids)
        self.cc = self.centroids @ self.centroids.T if k * k * 4 <= CHUNK_BYTES else None  # (k, k)
        self.limit = None  # (k, k): sin t |c_a - c_b| + slack, the bound's right-hand side for every pair
        if self.cc is not None and radius is not None:
            self.limit = self.side_radius * np.sqrt(np.maximum(0.0, 2.0 - 2.0 * self.cc)) + BOUND_SLACK
            self.limit_max = self.limit.max(1)  # (k,)

    def __call__(self, rows: np.ndarray, known: np.ndarray | None = None) -> dict[str, np.ndarray]:
        x = normalize(np.array(rows, dtype=np.float32))  # (n, d)
        sims = x @ self.centroids.T  # (n, k)
        n = np.arange(len(x))
        own = sims.argmax(1).astype(np.int64) if known is None else np.asarray(known, np.int64)
        s_own = sims[n, own]
        if known is not None:
            _check_voronoi(sims, s_own)
        out = {"row": n, "cluster": own, "cosine": s_own.astype(np.float32), "own": np.ones(len(x), np.int8)}
        if self.radius is None or len(self.centroids) == 1:
            return out
        i, j = self._candidates(sims, s_own, own)
        return {"row": np.r_[n, i], "cluster": np.r_[own, j], "cosine": np.r_[out["cosine"], sims[i, j]],
                "own": np.r_[out["own"], np.zeros(len(i), np.int8)]}

    def _candidates(self, sims: np.ndarray, s_own: np.ndarray, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(row, cluster)`` with ``x.c_own - x.c_j < sin t * |c_own - c_j| + slack``, ``j != own``."""
        if self.limit is not None:  # one dense pre-filter with each cluster's largest limit, then the exact test
            i, j = np.nonzero(sims > (s_own - self.limit_max[own])[:, None])
            keep = (j != own[i]) & (s_own[i] - sims[i, j] < self.limit[own[i], j])
            return i[keep], j[keep]
        r = float(self.side_radius)  # type: ignore[arg-type]
        i, j = np.nonzero(sims > (s_own - (2.0 * r + BOUND_SLACK))[:, None])  # |c_own - c_j| <= 2: a pre-filter
        keep = j != own[i]
        i, j = i[keep], j[keep]
        cc = self.cc[own[i], j] if self.cc is not None else np.einsum(
            "nd,nd->n", self.centroids[own[i]], self.centroids[j])
        w = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * cc))  # |c_own - c_j| for unit centroids
        hit = s_own[i] - sims[i, j] < r * w + BOUND_SLACK
        return i[hit], j[hit]


def _check_voronoi(sims: np.ndarray, s_own: np.ndarray) -> None:
    bad = s_own < sims.max(1) - BOUND_SLACK
    if bad.any():
        raise ValueError(f"clusters.assign is not the nearest-centroid assignment for {int(bad.sum())} row(s) of a "
                         f"chunk; the exact cross-cluster search needs nearest-centroid clusters (pass "
                         f"cross_cluster=False to search within clusters only)")


@dataclass
class Boundary:
    """Rows ``rows (E,)`` that may have a partner in cluster ``cluster (E,)`` (other than their own).

    ``gap (E,)``: ``x.c_own - x.c_cluster`` of each entry, with the unit ``centroids`` and the partner
    ``radius`` (chord) they came from, for the joint bound of ``semdedup``'s docstring (``None``: not
    known, every row pair of a cluster pair is compared). Ids are int32 where they fit (half the memory
    of int64: 26.8M entries at 1M rows x 1,000 clusters).
    """

    rows: np.ndarray
    cluster: np.ndarray
    gap: np.ndarray | None = None
    centroids: np.ndarray | None = None
    radius: float | None = None


def compact_ids(ids: np.ndarray, n: int) -> np.ndarray:
    """``ids`` as int32 when values below ``n`` fit, else int64."""
    return ids.astype(np.int32 if n < 2**31 else np.int64, copy=False)


def scatter_entries(n: int, parts: Any, known: np.ndarray | None = None, fn: BoundaryRows | None = None,
                    ) -> tuple[np.ndarray, np.ndarray, Boundary]:
    """Collect ``BoundaryRows`` outputs (``row`` already global ids) into ``assign (N,)``, ``cosine (N,)``, boundary.

    Each entry's ``gap`` is its row's cosine to the own centroid minus the entry's cosine (a batch holds
    both); ``fn`` gives the boundary its centroids and radius.
    """
    best = np.empty(n, np.int64) if known is None else np.asarray(known, np.int64)
    cos = np.empty(n, np.float32)
    rows, cl, gaps = [], [], []
    for res in parts:
        own = res["own"] == 1
        best[res["row"][own]], cos[res["row"][own]] = res["cluster"][own], res["cosine"][own]
        r = res["row"][~own]
        rows.append(compact_ids(r, n))
        cl.append(compact_ids(res["cluster"][~own], n))
        gaps.append((cos[r] - res["cosine"][~own]).astype(np.float32))
    r = np.concatenate(rows) if rows else np.empty(0, np.int64)
    c = np.concatenate(cl) if cl else np.empty(0, np.int64)
    g = np.concatenate(gaps) if gaps else np.empty(0, np.float32)
    if fn is None or fn.radius is None:
        return best, cos, Boundary(r, c)
    return best, cos, Boundary(r, c, g, fn.centroids, float(fn.radius))


def assign_boundary(emb: Embeddings, centroids: np.ndarray, radius: float | None, known: np.ndarray | None = None,
                    backend: str = "local", concurrency: int | None = None,
                    ) -> tuple[np.ndarray, np.ndarray, Boundary]:
    """One streamed pass: nearest centroid and cosine of every row, and the exact cross-cluster candidates.

    ``known`` (N,): an assignment to keep (checked to be nearest-centroid); ``radius=None``: no candidates.
    """
    check_embeddings(centroids, emb.d, "centroids")
    check_choice(backend, "backend", ("local", "ray"))
    fn = BoundaryRows(centroids, radius)
    rows = emb.chunk_rows(per_row_bytes=4 * (emb.d + 6 * len(centroids)))
    if backend == "ray":
        from .ray_backend import map_rows

        parts = map_rows(_RayBoundary(fn, known), emb, batch_size=min(rows, 8192), concurrency=concurrency,
                         with_ids=True)
        return scatter_entries(emb.n, parts, known, fn)

    def local() -> Iterator[dict[str, np.ndarray]]:
        for start, block in emb.chunks(rows):
            res = fn(block, None if known is None else known[start:start + len(block)])
            res["row"] = res["row"] + start
            yield res

    return scatter_entries(emb.n, local(), known, fn)


class _RayBoundary:
    """``(ids, rows) -> entries`` with global row ids, for ``map_rows(..., with_ids=True)``."""

    def __init__(self, fn: BoundaryRows, known: np.ndarray | None) -> None:
        self.fn, self.known = fn, known

    def __call__(self, ids: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
        res = self.fn(rows, None if self.known is None else self.known[ids])
        res["row"] = ids[res["row"]]
        return res


def assign(emb: Embeddings, centroids: np.ndarray, backend: str = "local",
           concurrency: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stream all rows and return each row's nearest centroid ``(N,)`` and cosine to it ``(N,)``."""
    a, c, _ = assign_boundary(emb, centroids, None, backend=backend, concurrency=concurrency)
    return a, c


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
