"""Shared parts of the SemDeDup benchmarks: a plain faiss baseline, exact ground truth, recall / precision.

Ground truth = every pair of rows with cosine > 1 - eps. ``exact_pairs`` computes all of them (blocked
float32 products, pairs within 1e-4 of the threshold recomputed in float64); ``sampled_pairs`` does
the same for a uniform sample of query rows against all rows (for inputs where all pairs would take
hours on 2 cores). A pair is *resolved* when at least one member is removed; pair recall = resolved
pairs / ground-truth pairs. Precision = removed rows whose reported kept partner really has cosine
> 1 - eps (float64), i.e. no removal without a true partner.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

BAND = 1e-4


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm, float32."""
    x = np.array(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _above(q: np.ndarray, qi: np.ndarray, x: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(qi[a], j)`` with float64 cosine > threshold among rows ``q`` vs ``x`` (float32 pre-filter)."""
    s = q @ x.T
    a, j = np.nonzero(s > threshold - BAND)
    exact = np.einsum("nd,nd->n", q[a].astype(np.float64), x[j].astype(np.float64))
    hit = exact > threshold
    return qi[a[hit]], j[hit]


def exact_pairs(x: np.ndarray, threshold: float, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """All pairs ``i < j`` of unit rows with cosine > threshold."""
    pi, pj = [], []
    for s in range(0, len(x), block):
        i, j = _above(x[s:s + block], np.arange(s, min(s + block, len(x))), x, threshold)
        keep = j > i
        pi.append(i[keep])
        pj.append(j[keep])
    return np.concatenate(pi), np.concatenate(pj)


def sampled_pairs(emb: Any, threshold: float, n_queries: int, seed: int = 0,
                  block: int = 65_536) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(queries, pi, pj)``: every pair above threshold that touches one of ``n_queries`` random rows."""
    rng = np.random.default_rng(seed)
    qi = np.sort(rng.choice(emb.n, n_queries, replace=False))
    q = unit(emb.take(qi))
    pi, pj = [], []
    for start, rows in emb.chunks(block):
        a, j = _above(q, qi, unit(rows), threshold)
        j = j + start
        keep = a != j
        pi.append(np.minimum(a[keep], j[keep]))
        pj.append(np.maximum(a[keep], j[keep]))
    p = np.unique(np.stack([np.concatenate(pi), np.concatenate(pj)]), axis=1)
    return qi, p[0], p[1]


def scores(kept: np.ndarray, n: int, pi: np.ndarray, pj: np.ndarray) -> dict[str, Any]:
    """Pair recall of a kept set against ground-truth pairs."""
    k = np.zeros(n, bool)
    k[kept] = True
    both = k[pi] & k[pj]
    return {"gt_pairs": int(len(pi)), "unresolved_pairs": int(both.sum()),
            "pair_recall": float(1.0 - both.mean()) if len(pi) else 1.0}


def precision(emb: Any, dup_of: np.ndarray, threshold: float) -> float:
    """Removed rows whose kept partner has float64 cosine > threshold."""
    rm = np.flatnonzero(dup_of >= 0)
    if not len(rm):
        return 1.0
    ok = 0
    for s in range(0, len(rm), 65_536):
        r = rm[s:s + 65_536]
        o = np.argsort(dup_of[r])
        a = unit(emb.take(r)).astype(np.float64)
        b = unit(emb.take(np.sort(dup_of[r]))).astype(np.float64)
        b_for_r = np.empty_like(b)
        b_for_r[o] = b
        ok += int((np.einsum("nd,nd->n", a, b_for_r) > threshold).sum())
    return ok / len(rm)


def faiss_semdedup(emb: Any, n_clusters: int, eps: float, seed: int = 0, niter: int = 20,
                   points_per_centroid: int = 256) -> tuple[np.ndarray, dict[str, float]]:
    """A plain faiss script: spherical k-means on a sample, nearest-centroid search, per-cluster greedy.

    Inside each cluster, farthest-from-centroid first, a row is dropped if any row kept before it has
    cosine > 1 - eps (the per-cluster pass of Abbas et al. 2023, as a user would write it with faiss).
    Returns ``duplicate_of (N,)`` and stage times.
    """
    import faiss

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    n_train = min(emb.n, n_clusters * points_per_centroid)
    sample = unit(emb.take(np.sort(rng.choice(emb.n, n_train, replace=False))))
    km = faiss.Kmeans(emb.d, n_clusters, niter=niter, seed=seed + 1, spherical=True, verbose=False,
                      max_points_per_centroid=points_per_centroid)
    km.train(sample)
    del sample
    t1 = time.perf_counter()
    assign = np.empty(emb.n, np.int64)
    cos = np.empty(emb.n, np.float32)
    for start, rows in emb.chunks(65_536):
        d, i = km.index.search(unit(rows), 1)
        assign[start:start + len(rows)], cos[start:start + len(rows)] = i[:, 0], d[:, 0]
    t2 = time.perf_counter()
    dup_of = np.full(emb.n, -1, np.int64)
    order = np.argsort(assign, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(assign, minlength=n_clusters))]
    for c in range(n_clusters):
        idx = order[bounds[c]:bounds[c + 1]]
        if len(idx) < 2:
            continue
        idx = idx[np.argsort(cos[idx], kind="stable")]  # farthest first
        x = unit(emb.take(np.sort(idx)))[np.argsort(np.argsort(idx))]
        a, b = np.nonzero(np.triu(x @ x.T > 1.0 - eps, 1))  # a < b in visit order
        for j in np.unique(b):
            earlier = a[b == j]
            kept_before = earlier[dup_of[idx[earlier]] < 0]
            if len(kept_before):
                dup_of[idx[j]] = idx[kept_before.min()]
    t3 = time.perf_counter()
    return dup_of, {"kmeans_s": t1 - t0, "assign_s": t2 - t1, "dedup_s": t3 - t2, "total_s": t3 - t0}
