"""Allocation: how many units each group keeps so that MACs or parameters meet a target."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .graph import Graph, Group

Counts = dict[int, int]


@dataclass
class Selection:
    """Kept units per group (sorted indices) and the cost they give."""

    keep: dict[int, Tensor]
    counts: Counts
    cost_before: int
    cost_after: int


def _ceil_to(c: float, r: int, n: int) -> int:
    return min(n, max(r, math.ceil(c / r) * r)) if r > 1 else min(n, max(1, math.ceil(c)))


def min_counts(groups: list[Group], max_group_sparsity: float, round_to: int) -> Counts:
    """Fewest units a group may keep: ``(1 - max_group_sparsity)`` of it, at least one (rounded up)."""
    return {g.id: _ceil_to(g.size * (1.0 - max_group_sparsity), _round(g, round_to), g.size) for g in groups}


def _round(g: Group, round_to: int) -> int:
    return round_to if g.kind == "channel" and g.size >= round_to else 1


def uniform_counts(groups: list[Group], s: float, mins: Counts, round_to: int) -> Counts:
    """Every group loses the same fraction ``s`` of its units (rounded up, floored at ``mins``)."""
    return {g.id: max(mins[g.id], _ceil_to(g.size * (1.0 - s), _round(g, round_to), g.size)) for g in groups}


def global_order(groups: list[Group], z: dict[int, Tensor]) -> Tensor:
    """Group index of every unit, in the order units are removed: lowest normalized score first (ties in
    group order, then unit order)."""
    gidx = torch.cat([torch.full((g.size,), i) for i, g in enumerate(groups)])
    vals = torch.cat([z[g.id] for g in groups])
    return gidx[torch.argsort(vals, stable=True)]


def global_counts(groups: list[Group], order: Tensor, k: int, mins: Counts, round_to: int) -> Counts:
    """Each group loses its units among the first ``k`` of ``order`` (rounded, floored at ``mins``)."""
    removed = torch.bincount(order[:k], minlength=len(groups)).tolist()
    return {g.id: max(mins[g.id], _ceil_to(g.size - r, _round(g, round_to), g.size))
            for g, r in zip(groups, removed)}


def _bisect(f: Callable[[float], Counts], cost: Callable[[Counts], int], lo: float, hi: float, budget: float,
            iters: int = 40) -> Counts:
    """Counts at the smallest ``x`` in ``[lo, hi]`` whose cost meets ``budget`` (cost falls as ``x`` grows)."""
    best = f(hi)
    for _ in range(iters):
        mid = (lo + hi) / 2
        c = f(mid)
        if cost(c) <= budget:
            hi, best = mid, c
        else:
            lo = mid
    return best


def allocate_widths(graph: Graph, groups: list[Group], scores: dict[int, Tensor], *, budget: float,
                    cost: Callable[[Counts], int], rule: str, max_group_sparsity: float, round_to: int) -> Counts:
    """Per-group unit counts meeting ``cost(counts) <= budget``; ``rule`` is ``"uniform"`` or ``"global"``."""
    mins = min_counts(groups, max_group_sparsity, round_to)
    if rule == "uniform":
        first = _bisect(lambda s: uniform_counts(groups, s, mins, round_to), cost, 0.0, 1.0, budget)
        return top_up(groups, _refill(groups, first, mins, cost, budget, round_to), cost, budget, round_to)
    order = global_order(groups, {g.id: normalize(scores[g.id]) for g in groups})
    n = len(order)
    return _bisect(lambda t: global_counts(groups, order, round(t * n), mins, round_to), cost, 0.0, 1.0, budget,
                   iters=max(20, n.bit_length() + 2))


allocate = allocate_widths  # the former name (clashed with prunekit.allocation.allocate)


def _refill(groups: list[Group], counts: Counts, mins: Counts, cost: Callable[[Counts], int], budget: float,
            round_to: int, coarse: int = 16) -> Counts:
    """Give the budget that coarse groups (few units, e.g. 2 kv heads) left unused back to the fine ones,
    all by one fraction again, so uniform widths stay uniform."""
    fine = [g for g in groups if g.size >= coarse]
    if not fine or len(fine) == len(groups):
        return counts

    def f(s: float) -> Counts:
        """Counts with the fine groups at fraction ``s``."""
        return {**counts, **uniform_counts(fine, s, mins, round_to)}

    return _bisect(f, cost, 0.0, 1.0, budget)


def top_up(groups: list[Group], counts: Counts, cost: Callable[[Counts], int], budget: float,
           round_to: int) -> Counts:
    """Spend what rounding left of the budget: grow groups of the same size and kind together (so
    identical layers stay identical) by one step at a time, largest groups first, while the budget holds."""
    classes: dict[tuple[int, str], list[Group]] = {}
    for g in groups:
        classes.setdefault((g.size, g.kind), []).append(g)
    order = sorted(classes, key=lambda k: -k[0])
    counts = dict(counts)
    grew = True
    while grew:
        grew = False
        for key in order:
            trial = dict(counts)
            for g in classes[key]:
                trial[g.id] = min(g.size, counts[g.id] + _round(g, round_to))
            if trial != counts and cost(trial) <= budget:
                counts, grew = trial, True
    return counts


def normalize(s: Tensor) -> Tensor:
    """Scores divided by their group mean, so groups of different scale rank together (DepGraph's
    ``mean`` normalizer, Fang et al. 2023)."""
    m = s.mean()
    return s / m if float(m) > 0 else torch.ones_like(s)


def keep_indices(groups: list[Group], scores: dict[int, Tensor], counts: Counts) -> dict[int, Tensor]:
    """The ``counts[g]`` highest-scoring units of each shrinking group, as sorted indices."""
    out = {}
    for g in groups:
        k = counts.get(g.id, g.size)
        if k < g.size:
            out[g.id] = torch.sort(torch.topk(scores[g.id], k).indices).values
    return out
