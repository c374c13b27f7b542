"""SemDeDup: semantic deduplication of embeddings, streamed, cluster by cluster (Abbas et al. 2023).

1. spherical k-means (faiss) on a sample, every row assigned to its nearest centroid (streamed);
2. inside each cluster, order members farthest-from-centroid first (``keep="farthest"``, the paper's
   choice) and visit them in that order: a member is dropped when its cosine similarity to a member
   *kept earlier* exceeds ``1 - eps`` (greedy over kept members, so a chain A~B~C with A !~ C keeps
   A and C, unlike the reference code's "any earlier member" rule);
3. similarities are computed in row blocks, so memory is bounded by ``CHUNK_BYTES`` per block.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import check_choice
from .checks import check_nonneg_float, check_positive_int
from .cluster import CHUNK_BYTES, Clusters, Embeddings, assign, normalize, train_kmeans

log = logging.getLogger(__name__)

KEEP_ORDERS = ("farthest", "closest", "random")


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


def visit_order(cos: np.ndarray, keep: str, rng: np.random.Generator) -> np.ndarray:
    """Order of a cluster's members: farthest from the centroid first, closest first, or random."""
    if keep == "farthest":
        return np.argsort(cos, kind="stable")
    if keep == "closest":
        return np.argsort(-cos, kind="stable")
    return rng.permutation(len(cos))


def _cluster_batches(order: np.ndarray, sizes: np.ndarray, max_rows: int):
    """Groups of whole clusters (``(first cluster, last cluster, member positions)``) of about ``max_rows`` rows."""
    bounds = np.r_[0, np.cumsum(sizes)]
    c = 0
    while c < len(sizes):
        stop = c + 1
        while stop < len(sizes) and bounds[stop + 1] - bounds[c] <= max_rows:
            stop += 1
        yield c, stop, order[bounds[c]:bounds[stop]]
        c = stop


def semdedup(embeddings: Any, eps: float, n_clusters: int = 100, seed: int = 0, niter: int = 20,
             keep: str = "farthest", clusters: Clusters | None = None, dim: int | None = None) -> DedupResult:
    """SemDeDup (Abbas et al. 2023, Sec. 3): within each k-means cluster drop examples with cosine > ``1 - eps``.

    ``embeddings``: ``(N, d)`` array, tensor or ``.npy`` path (memory-mapped, streamed); ``dim``
    checks the width. Returns kept indices and, for each removed example, the kept one it duplicates.
    """
    e = check_nonneg_float(eps, "eps", upper=1.0)
    check_choice(keep, "keep", KEEP_ORDERS)
    emb = Embeddings(embeddings, dim=dim)
    if clusters is None:
        check_positive_int(n_clusters, "n_clusters")
        cent = train_kmeans(emb, n_clusters, seed=seed, niter=niter)
        a, c = assign(emb, cent)
        clusters = Clusters(cent, a, c)
    elif len(clusters.assign) != emb.n:
        raise ValueError(f"clusters cover {len(clusters.assign)} examples but embeddings hold {emb.n}")
    dup_of = _dedup_clusters(emb, clusters, 1.0 - e, keep, np.random.default_rng(seed))
    kept = torch.from_numpy(np.flatnonzero(dup_of < 0))
    stats = {"num_examples": emb.n, "num_kept": int(len(kept)), "n_clusters": clusters.k,
             "largest_cluster": int(clusters.sizes().max()), "eps": e, "keep": keep}
    return DedupResult(kept, dup_of, clusters, stats)


def _dedup_clusters(emb: Embeddings, cl: Clusters, threshold: float, keep: str,
                    rng: np.random.Generator) -> np.ndarray:
    """``duplicate_of (N,)`` over all clusters, reading whole clusters in batches of bounded size."""
    dup_of = np.full(emb.n, -1, np.int64)
    order = np.argsort(cl.assign, kind="stable")  # members of each cluster are contiguous
    sizes = cl.sizes()
    max_rows = max(int(sizes.max()), CHUNK_BYTES // (4 * emb.d))
    for c0, c1, members in _cluster_batches(order, sizes, max_rows):
        rows_sorted = np.sort(members)
        block = normalize(emb.take(rows_sorted))  # (r, d) in index order
        pos = np.searchsorted(rows_sorted, members)
        start = 0
        for c in range(c0, c1):
            idx = members[start:start + sizes[c]]  # global indices of cluster c
            e = block[pos[start:start + sizes[c]]]
            start += sizes[c]
            if len(idx) < 2:
                continue
            o = visit_order(cl.cosine[idx], keep, rng)
            block_rows = max(1, CHUNK_BYTES // (4 * len(idx)))
            local = greedy_keep(len(idx), *similar_pairs(e[o], threshold, block_rows))
            hit = local >= 0
            dup_of[idx[o][hit]] = idx[o][local[hit]]
    return dup_of
