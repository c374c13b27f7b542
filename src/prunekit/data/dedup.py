"""SemDeDup: semantic deduplication of embeddings, streamed, exact across cluster boundaries (Abbas et al. 2023).

1. spherical k-means (faiss) on a sample, every row assigned to its nearest centroid (streamed);
2. every pair with cosine ``> 1 - eps`` is found: inside each cluster by blocked all-pairs, and across
   clusters only where a partner can lie (the Voronoi bound in ``semdedup``'s docstring: exact, not a
   heuristic), by batched products over runs of anchor clusters (no loop over cluster pairs);
3. one greedy pass over *all* pairs in one global visit order (``keep``): a row is dropped when a row
   *kept earlier* in that order is its partner (greedy over kept members, so a chain A~B~C with
   A !~ C keeps A and C, unlike the reference code's "any earlier member" rule). The order is a
   property of the rows, not of the clusters, so the result does not depend on which cluster is
   searched first, and a pair split across two clusters keeps exactly one member;
4. similarities are computed in row blocks, so memory is bounded by ``CHUNK_BYTES`` per block.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import check_choice
from .checks import check_nonneg_float, check_positive_int
from .cluster import BOUND_SLACK, CHUNK_BYTES, Boundary, Clusters, Embeddings, assign_boundary, normalize, train_kmeans

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


def _size_classes(limit: int = 1 << 16) -> np.ndarray:
    """Padded block sizes ``1, 2, 3, 4, 6, 8, 12, 16, 24, ...`` (each at most 1.5x the previous)."""
    sizes = {1, 2, 3}
    p = 2
    while p <= limit:
        sizes |= {p, 3 * p // 2}
        p *= 2
    return np.array(sorted(sizes), np.int64)


SIZE_CLASSES = _size_classes()
DENSE_FRACTION = 16  # a cluster pair goes through the padded product when > 1/16 of its padded block are candidates


@dataclass
class CrossPairs:
    """Cluster pairs ``lo < hi`` compared across their common boundary, flat (one entry per row and pair).

    Pair ``p`` compares the ``na[p]`` rows of ``lo`` at ``rows[start[p]:start[p] + na[p]]`` with the
    ``nb[p]`` rows of ``hi`` right after them; pairs are ordered by ``(lo, hi)``, so consecutive pairs
    share their anchor cluster ``lo`` and a run of pairs reads each anchor row once. ``gap (E,)`` and
    ``limit (P,)`` (optional): each entry's ``x.c_own - x.c_other`` and each pair's joint bound
    ``r |c_lo - c_hi| + slack``: rows ``a, b`` of pair ``p`` can be partners only if
    ``gap[a] + gap[b] < limit[p]``.
    """

    rows: np.ndarray
    start: np.ndarray
    na: np.ndarray
    nb: np.ndarray
    gap: np.ndarray | None = None
    limit: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.start)

    def comparisons(self) -> int:
        """Row pairs in the pairs' boundary sets: ``sum_p na[p] * nb[p]``."""
        return int((self.na.astype(np.int64) * self.nb).sum())

    def runs(self, max_entries: int) -> list[CrossPairs]:
        """Consecutive runs of pairs of about ``max_entries`` entries each (a pair is never split)."""
        return [self.slice(a, b) for a, b in self.run_bounds(max_entries)]

    def run_bounds(self, max_entries: int) -> list[tuple[int, int]]:
        """``(first, end)`` pair numbers of each run of ``runs``."""
        size = self.na + self.nb
        job = (np.cumsum(size) - size) // max(1, max_entries)
        cuts = np.flatnonzero(np.r_[True, job[1:] != job[:-1], True]) if len(size) else np.zeros(1, np.int64)
        return list(zip(cuts[:-1].tolist(), cuts[1:].tolist()))

    def take(self, sel: np.ndarray) -> CrossPairs:
        """The pairs ``sel`` (ascending) as their own ``CrossPairs``, without gaps (every row pair compared)."""
        size = self.na[sel] + self.nb[sel]
        ent = np.repeat(self.start[sel], size) + (np.arange(int(size.sum())) - np.repeat(np.cumsum(size) - size, size))
        return CrossPairs(self.rows[ent], np.r_[0, np.cumsum(size)[:-1]].astype(np.int64), self.na[sel], self.nb[sel])

    def slice(self, a: int, b: int) -> CrossPairs:
        """Pairs ``a..b-1`` as their own ``CrossPairs`` (rows copied, starts rebased)."""
        s0 = int(self.start[a])
        s1 = int(self.start[b - 1] + self.na[b - 1] + self.nb[b - 1])
        return CrossPairs(self.rows[s0:s1].copy(), self.start[a:b] - s0, self.na[a:b].copy(), self.nb[a:b].copy(),
                          None if self.gap is None else self.gap[s0:s1].copy(),
                          None if self.limit is None else self.limit[a:b].copy())


def cross_pairs(assign: np.ndarray, boundary: Boundary, k: int) -> CrossPairs:
    """The boundary entries grouped by cluster pair: rows of ``lo`` that may pair into ``hi``, then the reverse.

    One argsort of one int64 key per entry, ``((lo k + hi) 2 + side) N + row`` (``np.lexsort`` when that
    would overflow); pairs with an empty side are dropped (no partner can exist). No loop over pairs.
    With the boundary's gaps, each pair also gets its joint bound ``limit``.
    """
    n, e = len(assign), len(boundary.rows)
    if e == 0:
        return CrossPairs(*(np.empty(0, np.int64) for _ in range(4)))
    if 2.0 * k * k * n >= 2.0 ** 62:
        order, key = _pair_order_lexsort(assign, boundary, k)
    else:
        key = np.empty(e, np.int64)
        for a in range(0, e, 1 << 22):  # built in slices: no full-length temporaries
            rows = boundary.rows[a:a + (1 << 22)].astype(np.int64)
            own, other = assign[rows], boundary.cluster[a:a + (1 << 22)].astype(np.int64)
            pair = np.minimum(own, other) * k + np.maximum(own, other)
            key[a:a + len(rows)] = (pair * 2 + (own > other)) * n + rows
        order = np.argsort(key)
        key.sort()  # in place: no second full-length key
        key //= n  # 2 pair + side, per sorted entry
    plan, keep, pair = _group_sides(boundary.rows[order], key)
    del key
    if boundary.gap is not None and boundary.centroids is not None and boundary.radius is not None:
        plan.gap = boundary.gap[order][keep]
        plan.limit = _pair_limits(boundary.centroids, pair // k, pair % k, boundary.radius)
    return plan


def _pair_order_lexsort(assign: np.ndarray, boundary: Boundary, k: int) -> tuple[np.ndarray, np.ndarray]:
    rows = boundary.rows.astype(np.int64)
    own, other = assign[rows], boundary.cluster.astype(np.int64)
    key = (np.minimum(own, other) * k + np.maximum(own, other)) * 2 + (own > other)
    order = np.lexsort((rows, key))
    return order, key[order]


def _group_sides(rows: np.ndarray, key: np.ndarray) -> tuple[CrossPairs, np.ndarray, np.ndarray]:
    """``CrossPairs`` from entries sorted by (pair, side, row), ``key = 2 pair + side``; kept-entry mask, pair ids."""
    seg = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])  # segments of one (pair, side)
    seg_key = key[seg]
    seg_len = np.diff(np.r_[seg, len(rows)])
    # a pair has both sides when its side-0 segment is followed by its side-1 segment
    lo_side = np.flatnonzero(((seg_key[:-1] & 1) == 0) & (seg_key[1:] == seg_key[:-1] + 1))
    both = np.zeros(len(seg), bool)
    both[lo_side] = both[lo_side + 1] = True
    keep = np.repeat(both, seg_len)  # a mask: 1 byte per entry
    na, nb = seg_len[lo_side].astype(np.int64), seg_len[lo_side + 1].astype(np.int64)
    start = np.r_[0, np.cumsum(na + nb)[:-1]].astype(np.int64)
    return CrossPairs(rows[keep], start, na, nb), keep, seg_key[lo_side] >> 1


def _pair_limits(centroids: np.ndarray, lo: np.ndarray, hi: np.ndarray, radius: float) -> np.ndarray:
    """``radius |c_lo - c_hi| + 2 slack`` per cluster pair (float64), in slices of 65,536 pairs."""
    out = np.empty(len(lo), np.float64)
    for a in range(0, len(lo), 1 << 16):
        cc = np.einsum("nd,nd->n", centroids[lo[a:a + (1 << 16)]], centroids[hi[a:a + (1 << 16)]])
        out[a:a + len(cc)] = radius * np.sqrt(np.maximum(0.0, 2.0 - 2.0 * cc.astype(np.float64))) + 2 * BOUND_SLACK
    return out


class PairFinder:
    """Pairs with cosine ``> threshold`` inside clusters (``within``) or between boundary sets (``across``).

    Works on global row ids and reads rows itself, so the same object runs locally or in Ray tasks.
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.products = 0  # row pairs multiplied across clusters by this object (local runs)

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

    def across(self, emb: Embeddings, plan: CrossPairs) -> tuple[np.ndarray, np.ndarray]:
        """All pairs ``(a, b)``, ``a`` on the ``lo`` side, ``b`` on the ``hi`` side of each cluster pair of ``plan``.

        The rows are read once per call; the blocks of all pairs of one padded size class ``(ca, cb)`` go
        through one batched product (``torch.bmm``) with padding rows of zeros (cosine 0, never a hit), in
        slices of about ``CHUNK_BYTES``; pairs too large for padding are multiplied one by one. The
        products are small (tens of rows a side), so each runs on one thread and the batches are spread
        over ``torch.get_num_threads()`` Python threads (torch releases the GIL): splitting every small
        product over torch's own pool cost 18x the time on a loaded 2-core box (0.85 vs 15.5 s for the
        same 200k-row search), because each product waits for the slowest thread.
        """
        if not len(plan):
            return np.empty(0, np.int64), np.empty(0, np.int64)
        if plan.gap is not None and plan.limit is not None:
            return self._across_joint(emb, plan)
        with one_torch_thread() as threads:
            return self._across(emb, plan, threads)

    def _across_joint(self, emb: Embeddings, plan: CrossPairs) -> tuple[np.ndarray, np.ndarray]:
        """Only the row pairs that pass the joint bound ``gap_a + gap_b < limit``, one dot product each.

        Per pair, its ``hi`` rows are sorted by gap, so the partners a ``lo`` row can have are a prefix
        (``searchsorted`` on ``8 p + gap``, one call for the whole run). Cluster pairs where more than
        ``1 / DENSE_FRACTION`` of the padded block are candidates go through the padded batched product
        (``_across``); the other candidates are gathered and multiplied in slices of about ``CHUNK_BYTES``.
        """
        ia, ib, per_pair = _joint_candidates(plan)
        dense = per_pair * DENSE_FRACTION > _size_class(plan.na) * _size_class(plan.nb)
        if dense.any():  # pairs where most row pairs are candidates: one padded product beats gathering each
            with one_torch_thread() as threads:
                pa, pb = self._across(emb, plan.take(np.flatnonzero(dense)), threads)
            sparse = ~dense[np.searchsorted(plan.start, ia, side="right") - 1]
            ia, ib = ia[sparse], ib[sparse]
            if not len(ia):
                return pa, pb
        else:
            pa = pb = np.empty(0, np.int64)
        self.products += len(ia)
        ra, rb = plan.rows[ia], plan.rows[ib]  # only the rows of some candidate are read
        uniq = np.unique(np.r_[ra, rb])
        block = normalize(emb.take(uniq))
        ia, ib = np.searchsorted(uniq, ra), np.searchsorted(uniq, rb)
        pi, pj = [], []
        step = max(1, CHUNK_BYTES // (8 * emb.d))
        for s in range(0, len(ia), step):
            a, b = ia[s:s + step], ib[s:s + step]
            hit = np.einsum("nd,nd->n", block[a], block[b]) > self.threshold
            pi.append(a[hit])
            pj.append(b[hit])
        return np.r_[pa, uniq[_cat(pi)]], np.r_[pb, uniq[_cat(pj)]]

    def _across(self, emb: Embeddings, plan: CrossPairs, threads: int) -> tuple[np.ndarray, np.ndarray]:
        uniq, inv = np.unique(plan.rows, return_inverse=True)
        block = torch.from_numpy(np.concatenate([normalize(emb.take(uniq)), np.zeros((1, emb.d), np.float32)]))
        ca, cb = _size_class(plan.na), _size_class(plan.nb)
        self.products += int((ca * cb).sum())
        big = ca * cb > CHUNK_BYTES // 16
        pi, pj = [], []
        for p in np.flatnonzero(big):
            a, b = self._big_pair(block, inv, plan, int(p))
            pi.append(a)
            pj.append(b)
        small = np.flatnonzero(~big)
        order = small[np.lexsort((cb[small], ca[small]))]  # by padded size class (lo side, hi side)
        batches = []
        for g0, g1 in _runs_of(ca[order] * (int(cb.max()) + 1) + cb[order]):
            wa, wb = int(ca[order[g0]]), int(cb[order[g0]])
            step = max(1, CHUNK_BYTES // (4 * threads * (wa * wb + (wa + wb) * emb.d)))
            batches += [(order[s:min(g1, s + step)], wa, wb) for s in range(g0, g1, step)]

        def run(batch: tuple[np.ndarray, int, int]) -> tuple[np.ndarray, np.ndarray]:
            return self._batch(block, inv, plan, *batch)

        if threads > 1 and len(batches) > 1:
            with ThreadPoolExecutor(threads) as pool:
                parts = list(pool.map(run, batches))
        else:
            parts = [run(b) for b in batches]
        pi += [p[0] for p in parts]
        pj += [p[1] for p in parts]
        return uniq[_cat(pi)], uniq[_cat(pj)]

    def _batch(self, block: Tensor, inv: np.ndarray, plan: CrossPairs, p: np.ndarray, wa: int, wb: int,
               ) -> tuple[np.ndarray, np.ndarray]:
        """Hits of the cluster pairs ``p`` padded to ``wa`` x ``wb`` rows: positions into the read rows."""
        pad, d = len(block) - 1, block.shape[1]
        ia = _padded(inv, plan.start[p], plan.na[p], wa, pad)
        ib = _padded(inv, plan.start[p] + plan.na[p], plan.nb[p], wb, pad)
        xa = block.index_select(0, torch.from_numpy(ia.ravel())).view(len(p), wa, d)
        xb = block.index_select(0, torch.from_numpy(ib.ravel())).view(len(p), wb, d)
        q, x, y = (t.numpy() for t in torch.nonzero(torch.bmm(xa, xb.transpose(1, 2)) > self.threshold,
                                                 as_tuple=True))
        return ia[q, x], ib[q, y]

    def _big_pair(self, block: Tensor, inv: np.ndarray, plan: CrossPairs, p: int) -> tuple[np.ndarray, np.ndarray]:
        """Pairs of one large cluster pair (positions into the read rows), by row blocks of its ``lo`` side."""
        s, na, nb = int(plan.start[p]), int(plan.na[p]), int(plan.nb[p])
        ra, rb = inv[s:s + na], inv[s + na:s + na + nb]
        eb = block[torch.from_numpy(rb)]
        step = max(1, CHUNK_BYTES // (4 * nb))
        pi, pj = [], []
        for a in range(0, na, step):
            i, j = (t.numpy() for t in torch.nonzero(block[torch.from_numpy(ra[a:a + step])] @ eb.T > self.threshold,
                                                     as_tuple=True))
            pi.append(ra[a + i])
            pj.append(rb[j])
        return _cat(pi), _cat(pj)


def _joint_candidates(plan: CrossPairs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entry positions ``(a, b)`` (``a`` on the lo side, ``b`` on the hi side of one pair) with
    ``gap[a] + gap[b] < limit[pair]``, and the count per pair; no loop over pairs.
    """
    size = plan.na + plan.nb
    pid = np.repeat(np.arange(len(plan)), size)  # pair of every entry
    pos = np.arange(len(plan.rows)) - np.repeat(plan.start, size)
    on_b = pos >= np.repeat(plan.na, size)
    a_ent, b_ent = np.flatnonzero(~on_b), np.flatnonzero(on_b)
    gap = plan.gap.astype(np.float64)  # type: ignore[union-attr]
    # gaps lie in [-slack, 2 sqrt 2] (nearest centroid; |c_i - c_j| <= 2): 8 p + gap keeps pairs apart
    bkey = 8.0 * pid[b_ent] + gap[b_ent]
    o = np.argsort(bkey, kind="stable")
    b_ent, bkey = b_ent[o], bkey[o]
    first = np.searchsorted(bkey, 8.0 * np.arange(len(plan)) - 1.0)  # first hi entry of each pair
    room = np.minimum(plan.limit[pid[a_ent]] - gap[a_ent], 4.0)  # type: ignore[index]
    count = np.searchsorted(bkey, 8.0 * pid[a_ent] + room) - first[pid[a_ent]]  # hi rows with gap < room
    count = np.maximum(count, 0)
    a = np.repeat(a_ent, count)
    offset = np.arange(len(a)) - np.repeat(np.cumsum(count) - count, count)
    per_pair = np.bincount(pid[a_ent], weights=count, minlength=len(plan)).astype(np.int64)
    return a, b_ent[np.repeat(first[pid[a_ent]], count) + offset], per_pair


@contextmanager
def one_torch_thread() -> Iterator[int]:
    """Run torch ops on one intra-op thread inside the block (restored after); yields the previous count."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield old
    finally:
        torch.set_num_threads(old)


def _runs_of(values: np.ndarray) -> list[tuple[int, int]]:
    """``(start, end)`` of the runs of equal consecutive values."""
    cuts = np.flatnonzero(np.r_[True, values[1:] != values[:-1], True]) if len(values) else np.zeros(1, np.int64)
    return list(zip(cuts[:-1].tolist(), cuts[1:].tolist()))


def _size_class(counts: np.ndarray) -> np.ndarray:
    """The padded size of each count: the smallest of ``SIZE_CLASSES`` that holds it (or the count itself)."""
    at = np.searchsorted(SIZE_CLASSES, counts)
    return np.where(at < len(SIZE_CLASSES), SIZE_CLASSES[np.minimum(at, len(SIZE_CLASSES) - 1)], counts)


def _padded(inv: np.ndarray, start: np.ndarray, count: np.ndarray, width: int, pad: int) -> np.ndarray:
    """``(m, width)`` positions ``inv[start + q]`` for ``q < count``, ``pad`` (a zero row) after."""
    q = np.arange(width)
    idx = np.minimum(start[:, None] + q, len(inv) - 1)
    return np.where(q < count[:, None], inv[idx], pad)


def _read(emb: Embeddings, groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    rows = np.unique(np.concatenate(groups)) if groups else np.empty(0, np.int64)
    return rows, normalize(emb.take(rows))


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)


def all_pairs(emb: Embeddings, assign: np.ndarray, k: int, boundary: Boundary | None, threshold: float,
              backend: str = "local", concurrency: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Every pair above ``threshold`` the search covers: within clusters, and across them where ``boundary`` allows.

    Jobs: batches of whole clusters (``within``) and runs of consecutive cluster pairs, i.e. groups of
    anchor clusters (``across``), each reading about ``CHUNK_BYTES`` of rows once; locally they run in
    order, on Ray as tasks that read their rows themselves.
    """
    t0 = time.perf_counter()
    within = cluster_groups(assign, k)
    max_rows = max(max((len(g) for g in within), default=1), CHUNK_BYTES // (4 * emb.d))
    jobs: list[tuple[str, Any]] = [("within", [within[g] for g in b]) for b in _batches(within, max_rows)]
    n_within = len(jobs)
    finder = PairFinder(threshold)
    times = {"within": 0.0, "across": 0.0, "plan": time.perf_counter() - t0}
    plan_stats = {"cross_cluster_pairs_of_clusters": 0, "cross_cluster_candidate_rows": 0,
                  "cross_cluster_comparisons": 0}
    parts: list[tuple[np.ndarray, np.ndarray]] = []

    def run(kind: str, payloads: Iterable[Any]) -> None:
        """Jobs of one kind: Ray tasks that read their rows themselves, or here, in order (timed; a lazy
        ``payloads`` is then made one job at a time)."""
        if backend == "ray":
            from .ray_backend import map_jobs

            parts.extend(map_jobs(_RunJob(finder), emb, [(kind, p) for p in payloads], concurrency=concurrency))
            return
        for p in payloads:
            t = time.perf_counter()
            parts.append(getattr(finder, kind)(emb, p))
            times[kind] += time.perf_counter() - t

    run("within", [groups for _, groups in jobs])
    n_across = n_buckets = 0
    for sub in entry_buckets(assign, boundary, k):  # one plan per range of anchor clusters, freed after it
        t = time.perf_counter()
        plan = cross_pairs(assign, sub, k)
        del sub
        n_buckets += 1
        bounds = plan.run_bounds(max_rows)
        times["plan"] += time.perf_counter() - t
        plan_stats["cross_cluster_pairs_of_clusters"] += len(plan)
        plan_stats["cross_cluster_candidate_rows"] += int(len(plan.rows))
        plan_stats["cross_cluster_comparisons"] += plan.comparisons()
        n_across += len(bounds)
        run("across", (plan.slice(a, b) for a, b in bounds))  # locally sliced when run: no second copy
        del plan
    pi, pj = _cat([p[0] for p in parts]), _cat([p[1] for p in parts])
    stats = {"pair_jobs": n_within + n_across, "within_jobs": n_within, "across_jobs": n_across,
             "boundary_entries": 0 if boundary is None else int(len(boundary.rows)),
             "plan_buckets": n_buckets, **plan_stats, "plan_s": round(times["plan"], 3)}
    if backend != "ray":
        stats |= {"within_s": round(times["within"], 3), "across_s": round(times["across"], 3),
                  "cross_cluster_products": finder.products}
    return pi, pj, stats


PLAN_BYTES = 512 << 20  # one anchor-cluster bucket of the cross-cluster plan: its entries, their sort and gathers
PLAN_BYTES_PER_ENTRY = 40  # int64 key and order, permuted rows and gaps, the kept mask and copies (measured peak)


def entry_buckets(assign: np.ndarray, boundary: Boundary | None, k: int,
                  max_entries: int | None = None) -> Iterator[Boundary]:
    """The boundary entries split by ranges of anchor cluster ``lo = min(own, other)``, ``max_entries`` each.

    Every entry of a cluster pair ``(lo, hi)`` has the same ``lo``, so a bucket holds whole pairs and the
    buckets' plans together are the one plan (same pairs, same comparisons). A cluster whose entries exceed
    ``max_entries`` is a bucket of its own. Default budget: ``PLAN_BYTES`` (the plan's sort costs about
    ``PLAN_BYTES_PER_ENTRY`` bytes per entry; 115M entries at 4M rows would need 4.6 GB at once).
    Yields one bucket at a time (its copy of the entries is freed once the caller drops it); none without entries.
    """
    if boundary is None or len(boundary.rows) == 0:
        return
    cap = max(1, max_entries if max_entries is not None else PLAN_BYTES // PLAN_BYTES_PER_ENTRY)
    e, step = len(boundary.rows), 1 << 22
    if e <= cap:
        yield boundary
        return

    def lo_of(a: int) -> np.ndarray:
        own = assign[boundary.rows[a:a + step]]
        return np.minimum(own, boundary.cluster[a:a + step])

    counts = np.zeros(k, np.int64)
    for a in range(0, e, step):
        counts += np.bincount(lo_of(a), minlength=k)
    bucket_of = (np.cumsum(counts) - counts) // cap  # non-decreasing in the cluster id
    bucket_of = bucket_of.astype(np.uint16 if bucket_of[-1] < 1 << 16 else np.int64)
    bid = np.empty(e, bucket_of.dtype)
    for a in range(0, e, step):
        bid[a:a + step] = bucket_of[lo_of(a)]
    for b in np.unique(bucket_of[counts > 0]):
        idx = np.flatnonzero(bid == b)
        yield Boundary(boundary.rows[idx], boundary.cluster[idx], None if boundary.gap is None else boundary.gap[idx],
                       boundary.centroids, boundary.radius)


class _RunJob:
    """Picklable ``(emb, (kind, groups)) -> (pi, pj)`` for Ray tasks."""

    def __init__(self, finder: PairFinder) -> None:
        self.finder = finder

    def __call__(self, emb: Embeddings, job: tuple[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        kind, payload = job
        return getattr(self.finder, kind)(emb, payload)


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


def boundary_radius(eps: float) -> float:
    """``sqrt(2 eps)``: the Euclidean (chord) distance below which unit rows have cosine > ``1 - eps``."""
    return float(np.sqrt(2.0 * eps))


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
    Two exact refinements. (1) On the sphere the one-row radius is smaller: the partners of ``x`` are
    unit ``y`` at an angle below ``t = arccos(1 - eps)``; with ``u = w / |w|`` at angle ``phi`` from ``x``,
    ``y . u > cos(phi + t)``, so some partner has ``y . u <= 0`` only if ``phi > pi/2 - t``, i.e.
    ``x . c_i - x . c_j < sin(t) |w|``, ``sin(t) = sqrt(eps (2 - eps)) = r sqrt(1 - r^2 / 4)`` (0.25%
    below ``r`` at eps 0.01). (2) The joint bound: with the gaps ``g_x = x . c_i - x . c_j >= 0`` and
    ``g_y = y . c_j - y . c_i >= 0``, ``g_x + g_y = (x - y) . w <= |x - y| |w| < r |w|``; a row pair of
    ``A_ij x A_ji`` is multiplied only if ``g_x + g_y < r |w|`` (+ slack). The one-row bound is its
    special case ``g_y = 0``; on the 1M x 384 benchmark the joint bound leaves about 3.5% of
    ``A_ij x A_ji``, since rows near the bisector are rare on both sides at once.

    The search (``all_pairs``) has no loop over cluster pairs: the boundary entries, in buckets of whole
    anchor clusters ``lo`` of about ``PLAN_BYTES`` of plan each (``entry_buckets``; one bucket up to ~13M
    entries), are sorted by ``(lo, hi, side, row)`` (``cross_pairs``), cut into runs of consecutive anchor
    clusters that read about ``CHUNK_BYTES`` of rows each (once per run, so memory does not grow with N
    beyond the per-entry ids and gaps, 12 bytes each), and inside a run the candidates of all its cluster
    pairs are found by one sorted search and multiplied in slices (``PairFinder.across``). On Ray each
    run (and each batch of whole clusters) is one task.

    The keep rule is one global visit order over all rows (``visit_rank``): ``farthest`` (from the own
    centroid, the paper's), ``closest``, ``random`` (seeded) or ``first`` (lowest index); ties by index.
    """
    e = check_nonneg_float(eps, "eps", upper=1.0)
    check_choice(keep, "keep", KEEP_ORDERS)
    check_choice(backend, "backend", ("local", "ray"))
    emb = Embeddings(embeddings, dim=dim)
    radius = boundary_radius(e) if cross_cluster else None
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
