"""SemDeDup: semantic deduplication of embeddings, streamed, exact across cluster boundaries (Abbas et al. 2023).

1. spherical k-means (faiss) on a sample, every row assigned to its nearest centroid (streamed);
2. every pair with cosine ``> 1 - eps`` is found: inside each cluster by blocked all-pairs, and across
   clusters only where a partner can lie (the Voronoi bound in ``semdedup``'s docstring: exact, not a
   heuristic);
3. one greedy pass over *all* pairs in one global visit order (``keep``): a row is dropped when a row
   *kept earlier* in that order is its partner (greedy over kept members, so a chain A~B~C with
   A !~ C keeps A and C, unlike the reference code's "any earlier member" rule). The order is a
   property of the rows, not of the clusters, so the result does not depend on which cluster is
   searched first, and a pair split across two clusters keeps exactly one member;
4. similarities are computed in row blocks, so memory is bounded by ``CHUNK_BYTES`` per block.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import check_choice
from .checks import check_nonneg_float, check_positive_int
from .cluster import CHUNK_BYTES, Boundary, Clusters, Embeddings, assign_boundary, normalize, train_kmeans

log = logging.getLogger(__name__)

KEEP_ORDERS = ("farthest", "closest", "random", "first")


@dataclass
class DedupResult:
    """Kept indices (sorted), ``duplicate_of`` (N,) (-1 if kept, else the kept example it duplicates), clusters."""

    kept: Tensor
    duplicate_of: np.ndarray
    clusters: Clusters
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def removed(self) -> Tensor:
        """Indices removed as duplicates (sorted)."""
        return torch.from_numpy(np.flatnonzero(self.duplicate_of >= 0))


def similar_pairs(e: np.ndarray, threshold: float, block_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)``, ``i < j``, of unit rows ``e (m, d)`` with cosine ``> threshold``, by row blocks."""
    m = len(e)
    pi, pj = [], []
    for a in range(0, m, block_rows):
        s = e[a:a + block_rows] @ e.T  # (b, m)
        rows = np.arange(a, a + len(s))[:, None]
        hit = (s > threshold) & (np.arange(m)[None, :] > rows)
        i, j = np.nonzero(hit)
        pi.append(i + a)
        pj.append(j)
    return np.concatenate(pi), np.concatenate(pj)


def greedy_keep(m: int, pi: np.ndarray, pj: np.ndarray) -> np.ndarray:
    """Visit items ``0..m-1`` in order; drop ``j`` if an earlier *kept* ``i`` is paired with it: ``dup_of (m,)``."""
    dup_of = np.full(m, -1, np.int64)
    if pi.size == 0:
        return dup_of
    order = np.lexsort((pi, pj))  # by j, then i
    pi, pj = pi[order], pj[order]
    starts = np.flatnonzero(np.r_[True, pj[1:] != pj[:-1]])
    ends = np.r_[starts[1:], len(pj)]
    for s, e in zip(starts, ends):
        nb = pi[s:e]
        kept_nb = nb[dup_of[nb] < 0]
        if kept_nb.size:
            dup_of[pj[s]] = kept_nb[0]
    return dup_of


def visit_rank(cosine: np.ndarray, keep: str, seed: int = 0) -> np.ndarray:
    """Global visit ``order (N,)`` of all rows; ties by index.

    ``farthest``: lowest cosine to the own centroid first (the paper's choice: keep the least
    prototypical); ``closest``: highest first; ``random``: a seeded permutation of all rows;
    ``first``: index order (keep the earliest occurrence).
    """
    n = len(cosine)
    idx = np.arange(n)
    if keep == "farthest":
        return np.lexsort((idx, cosine))
    if keep == "closest":
        return np.lexsort((idx, -cosine.astype(np.float64)))
    if keep == "random":
        return np.random.default_rng(seed).permutation(n)
    return idx


def _batches(groups: list[np.ndarray], max_rows: int) -> Iterator[list[int]]:
    """Consecutive group numbers whose rows add up to about ``max_rows`` (a group is never split)."""
    batch, rows = [], 0
    for g, members in enumerate(groups):
        if batch and rows + len(members) > max_rows:
            yield batch
            batch, rows = [], 0
        batch.append(g)
        rows += len(members)
    if batch:
        yield batch


def cluster_groups(assign: np.ndarray, k: int) -> list[np.ndarray]:
    """Members of each cluster with at least 2 rows, ascending ids."""
    order = np.argsort(assign, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(assign, minlength=k))]
    return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b - a >= 2]


def cross_groups(assign: np.ndarray, boundary: Boundary, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each cluster pair ``lo < hi``: rows of ``lo`` that may pair into ``hi``, and rows of ``hi`` into ``lo``."""
    if len(boundary.rows) == 0:
        return []
    own = assign[boundary.rows]
    lo, hi = np.minimum(own, boundary.cluster), np.maximum(own, boundary.cluster)
    side = (own == hi).astype(np.int64)  # 0: a row of lo, 1: a row of hi
    o = np.lexsort((boundary.rows, side, hi, lo))
    key = lo[o] * k + hi[o]
    cuts = np.flatnonzero(np.r_[True, key[1:] != key[:-1], True])
    out = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        s, r = side[o[a:b]], boundary.rows[o[a:b]]
        if s[0] == 0 and s[-1] == 1:  # both sides present
            out.append((r[s == 0], r[s == 1]))
    return out


class PairFinder:
    """Pairs with cosine ``> threshold`` inside clusters (``within``) or between boundary sets (``across``).

    Works on global row ids and reads rows itself, so the same object runs locally or in Ray tasks.
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def within(self, emb: Embeddings, groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """All pairs inside each group (a cluster)."""
        rows, block = _read(emb, groups)
        pi, pj = [], []
        for g in groups:
            e = block[np.searchsorted(rows, g)]
            a, b = similar_pairs(e, self.threshold, max(1, CHUNK_BYTES // (4 * len(g))))
            pi.append(g[a])
            pj.append(g[b])
        return _cat(pi), _cat(pj)

    def across(self, emb: Embeddings, groups: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """All pairs ``(a, b)``, ``a`` from the first set, ``b`` from the second of each group."""
        rows, block = _read(emb, [r for g in groups for r in g])
        pi, pj = [], []
        for ra, rb in groups:
            ea, eb = block[np.searchsorted(rows, ra)], block[np.searchsorted(rows, rb)]
            step = max(1, CHUNK_BYTES // (4 * len(rb)))
            for s in range(0, len(ra), step):
                i, j = np.nonzero(ea[s:s + step] @ eb.T > self.threshold)
                pi.append(ra[s + i])
                pj.append(rb[j])
        return _cat(pi), _cat(pj)


def _read(emb: Embeddings, groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    rows = np.unique(np.concatenate(groups)) if groups else np.empty(0, np.int64)
    return rows, normalize(emb.take(rows))


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)


def all_pairs(emb: Embeddings, assign: np.ndarray, k: int, boundary: Boundary | None, threshold: float,
              backend: str = "local", concurrency: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Every pair above ``threshold`` the search covers: within clusters, and across them where ``boundary`` allows."""
    within = cluster_groups(assign, k)
    across = cross_groups(assign, boundary, k) if boundary is not None else []
    max_rows = max(max((len(g) for g in within), default=1), CHUNK_BYTES // (4 * emb.d))
    jobs = [("within", [within[g] for g in b]) for b in _batches(within, max_rows)]
    sizes = [np.r_[a, b] for a, b in across]
    jobs += [("across", [across[g] for g in b]) for b in _batches(sizes, max_rows)]
    finder = PairFinder(threshold)
    if backend == "ray":
        from .ray_backend import map_jobs

        parts = list(map_jobs(_RunJob(finder), emb, jobs, concurrency=concurrency))
    else:
        parts = [getattr(finder, kind)(emb, groups) for kind, groups in jobs]
    pi, pj = _cat([p[0] for p in parts]), _cat([p[1] for p in parts])
    stats = {"pair_jobs": len(jobs), "cross_cluster_pairs_of_clusters": len(across),
             "cross_cluster_candidate_rows": int(sum(len(s) for s in sizes)),
             "cross_cluster_comparisons": int(sum(len(a) * len(b) for a, b in across))}
    return pi, pj, stats


class _RunJob:
    """Picklable ``(emb, (kind, groups)) -> (pi, pj)`` for Ray tasks."""

    def __init__(self, finder: PairFinder) -> None:
        self.finder = finder

    def __call__(self, emb: Embeddings, job: tuple[str, list]) -> tuple[np.ndarray, np.ndarray]:
        kind, groups = job
        return getattr(self.finder, kind)(emb, groups)


def greedy_global(n: int, pi: np.ndarray, pj: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``duplicate_of (N,)`` of one greedy pass over all pairs in the visit ``order``."""
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    ri, rj = rank[pi], rank[pj]
    first, second = np.minimum(ri, rj), np.maximum(ri, rj)
    dup_rank = greedy_keep(n, first, second)
    dup_of = np.full(n, -1, np.int64)
    hit = dup_rank >= 0
    dup_of[order[hit]] = order[dup_rank[hit]]
    return dup_of


def semdedup(embeddings: Any, eps: float, n_clusters: int = 100, seed: int = 0, niter: int = 20,
             keep: str = "farthest", clusters: Clusters | None = None, dim: int | None = None,
             cross_cluster: bool = True, backend: str = "local", concurrency: int | None = None) -> DedupResult:
    """SemDeDup (Abbas et al. 2023, Sec. 3): drop examples with cosine > ``1 - eps`` to a kept one, exactly.

    ``embeddings``: ``(N, d)`` array, tensor, ``.npy`` path (memory-mapped, streamed) or a folder of
    ``.npy`` shards; ``dim`` checks the width. Returns kept indices and, for each removed example, the
    kept one it duplicates. ``backend="ray"``: assignment and pair search run as Ray Data jobs that
    read the rows themselves (same kept indices). ``cross_cluster=False``: the paper's
    single-cluster pass (misses pairs that k-means splits).

    Exactness of the cross-cluster search (the Voronoi bound). Rows are unit vectors; ``x`` is in
    cluster ``i`` and ``y`` in cluster ``j != i``, each of its nearest centroid (unit ``c_i``, ``c_j``).
    If ``x . y > 1 - eps`` then ``|x - y|^2 = 2 - 2 x . y < 2 eps``, so ``|x - y| < r = sqrt(2 eps)``.
    With ``w = c_i - c_j``, ``y`` nearest to ``c_j`` gives ``y . w <= 0``, hence by Cauchy-Schwarz
    ``x . c_i - x . c_j = x . w = y . w + (x - y) . w < r |w|``, and symmetrically
    ``y . c_j - y . c_i < r |w|``. So every pair across clusters ``i, j`` lies in ``A_ij x A_ji`` with
    ``A_ij = {x in i : x . c_i - x . c_j < r |c_i - c_j|}`` (``|w| = sqrt(2 - 2 c_i . c_j)``); those
    sets are collected in the assignment pass (plus ``1e-4`` slack for float32 rounding) and compared
    in full, so the search finds every pair above the threshold that the blocked all-pairs would.

    The keep rule is one global visit order over all rows (``visit_rank``): ``farthest`` (from the own
    centroid, the paper's), ``closest``, ``random`` (seeded) or ``first`` (lowest index); ties by index.
    """
    e = check_nonneg_float(eps, "eps", upper=1.0)
    check_choice(keep, "keep", KEEP_ORDERS)
    check_choice(backend, "backend", ("local", "ray"))
    emb = Embeddings(embeddings, dim=dim)
    radius = float(np.sqrt(2.0 * e)) if cross_cluster else None
    if clusters is None:
        check_positive_int(n_clusters, "n_clusters")
        cent = train_kmeans(emb, n_clusters, seed=seed, niter=niter)
        a, c, boundary = assign_boundary(emb, cent, radius, backend=backend, concurrency=concurrency)
        clusters = Clusters(cent, a, c)
    elif len(clusters.assign) != emb.n:
        raise ValueError(f"clusters cover {len(clusters.assign)} examples but embeddings hold {emb.n}")
    else:
        boundary = None
        if cross_cluster:
            _, _, boundary = assign_boundary(emb, clusters.centroids, radius, known=clusters.assign,
                                             backend=backend, concurrency=concurrency)
    if not cross_cluster:
        boundary = None
    pi, pj, pstats = all_pairs(emb, clusters.assign, clusters.k, boundary, 1.0 - e, backend, concurrency)
    dup_of = greedy_global(emb.n, pi, pj, visit_rank(clusters.cosine, keep, seed))
    kept = torch.from_numpy(np.flatnonzero(dup_of < 0))
    stats = {"num_examples": emb.n, "num_kept": int(len(kept)), "n_clusters": clusters.k,
             "largest_cluster": int(clusters.sizes().max()), "eps": e, "keep": keep,
             "cross_cluster": bool(cross_cluster), "pairs_found": int(len(pi)), "backend": backend, **pstats}
    log.info("semdedup: %d of %d kept; %d pairs above %.4f (%d across clusters searched in %d cluster pairs)",
             len(kept), emb.n, len(pi), 1.0 - e, pstats["cross_cluster_comparisons"],
             pstats["cross_cluster_pairs_of_clusters"])
    return DedupResult(kept, dup_of, clusters, stats)
