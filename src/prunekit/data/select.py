"""Selectors: ``select(scores, keep_fraction, rule, **params) -> LongTensor`` of kept indices, sorted and unique.

Scores are difficulties (higher = harder). Rules are named: ``keep-hard`` keeps the highest scores,
``keep-easy`` the lowest; ``random`` ignores them; ``class-balanced`` applies a rule per class;
``ccs`` samples strata over the score range after a hard cut-off; ``dbp`` sets per-cluster quotas
from cluster complexity. Ties break toward the lower index, so every rule is deterministic.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import check_choice
from ..registry import METHODS
from .checks import (
    as_labels,
    as_scores,
    check_nonneg_float,
    check_positive_int,
    check_same_length,
    keep_count,
    keep_fraction_arg,
)

SELECTORS = METHODS.view("data-selector")  # kind "data-selector" of METHODS
WITHIN_RULES = ("keep-hard", "keep-easy", "random", "ccs")


def _sorted(idx: Tensor) -> Tensor:
    return torch.sort(idx.long()).values


def hardest(scores: Tensor, k: int) -> Tensor:
    """Positions of the ``k`` highest scores (ties: lower index first)."""
    return torch.argsort(scores, descending=True, stable=True)[:k]


def easiest(scores: Tensor, k: int) -> Tensor:
    """Positions of the ``k`` lowest scores (ties: lower index first)."""
    return torch.argsort(scores, descending=False, stable=True)[:k]


def uniform(n: int, k: int, gen: torch.Generator) -> Tensor:
    """``k`` positions out of ``n`` uniformly without replacement."""
    return torch.randperm(n, generator=gen)[:k]


def _pick(rule: str, scores: Tensor, k: int, gen: torch.Generator, ccs_args: dict[str, Any] | None = None,
          cut: Tensor | None = None) -> Tensor:
    """Positions of ``k`` of ``scores`` under a within-group rule (``ccs`` takes ``beta`` and ``strata``)."""
    if rule == "keep-hard":
        return hardest(scores, k)
    if rule == "keep-easy":
        return easiest(scores, k)
    if rule == "ccs":
        a = ccs_args or {}
        return ccs_positions(scores, scores if cut is None else cut, k, a.get("beta", 0.0), a.get("strata", 50), gen)
    return uniform(len(scores), k, gen)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


@SELECTORS.register("keep-hard")
def keep_hard(scores: Any, keep_fraction: float, seed: int = 0) -> Tensor:
    """Keep the highest-scoring (hardest) examples (Paul et al. 2021; Toneva et al. 2019)."""
    s, f = as_scores(scores), keep_fraction_arg(keep_fraction)
    return _sorted(hardest(s, keep_count(len(s), f)))


@SELECTORS.register("keep-easy")
def keep_easy(scores: Any, keep_fraction: float, seed: int = 0) -> Tensor:
    """Keep the lowest-scoring (easiest) examples (Sorscher et al. 2022: best when data are scarce)."""
    s, f = as_scores(scores), keep_fraction_arg(keep_fraction)
    return _sorted(easiest(s, keep_count(len(s), f)))


@SELECTORS.register("random-subset", aliases=("random",))
def random(scores: Any, keep_fraction: float, seed: int = 0) -> Tensor:
    """Keep a uniform random subset (scores give only the data set size)."""
    s, f = as_scores(scores), keep_fraction_arg(keep_fraction)
    return _sorted(uniform(len(s), keep_count(len(s), f), _gen(seed)))


def largest_remainder(quota: np.ndarray, total: int, upper: np.ndarray) -> np.ndarray:
    """Integers ``<= upper`` summing to ``total``, closest to real ``quota`` (largest remainders first)."""
    base = np.minimum(np.floor(quota).astype(np.int64), upper)
    left = total - int(base.sum())
    frac = quota - np.floor(quota)
    order = np.lexsort((np.arange(len(quota)), -frac))  # by remainder desc, then index
    while left > 0:
        room = order[base[order] < upper[order]]
        if room.size == 0:
            raise ValueError(f"cannot place {total} examples: groups hold only {int(upper.sum())}")
        take = room[:left]
        base[take] += 1
        left -= take.size
    return base


@SELECTORS.register("class-balanced")
def class_balanced(scores: Any, keep_fraction: float, labels: Any = None, within: str = "keep-hard",
                   num_classes: int | None = None, beta: float = 0.0, strata: int = 50, seed: int = 0) -> Tensor:
    """Keep the same fraction of every class, choosing within a class by ``within``.

    ``within``: ``keep-hard``, ``keep-easy``, ``random``, or ``ccs`` (CCS run inside each class with
    ``beta`` and ``strata``, so the hard cut-off cannot empty a class).
    """
    s, f = as_scores(scores), keep_fraction_arg(keep_fraction)
    if labels is None:
        raise ValueError("class-balanced needs labels (one class index per example)")
    y = as_labels(labels, len(s), num_classes)
    check_choice(within, "within", WITHIN_RULES)
    ccs_args = _ccs_args(beta, strata, f) if within == "ccs" else None
    return _balanced_pick(s, y, keep_count(len(s), f), within, _gen(seed), ccs_args=ccs_args)


def _ccs_args(beta: float, strata: int, keep_fraction: float) -> dict[str, Any]:
    b = check_nonneg_float(beta, "beta", upper=1.0, upper_open=True)
    if b > 1.0 - keep_fraction + 1e-12:
        raise ValueError(f"beta={beta} cuts more than 1 - keep_fraction={keep_fraction} of the examples; "
                         "use beta <= 1 - keep_fraction")
    return {"beta": b, "strata": check_positive_int(strata, "strata")}


def _balanced_pick(s: Tensor, groups: Tensor, total: int, within: str, gen: torch.Generator,
                   quotas: np.ndarray | None = None, ccs_args: dict[str, Any] | None = None) -> Tensor:
    """Kept positions: ``quotas[g]`` (default: proportional to group size) from each group by ``within``."""
    counts = np.bincount(groups.numpy(), minlength=int(groups.max()) + 1)
    if quotas is None:
        quotas = largest_remainder(counts * (total / len(s)), total, counts)
    kept = []
    for g in np.flatnonzero(quotas):
        members = torch.nonzero(groups == int(g)).flatten()
        kept.append(members[_pick(within, s[members], int(quotas[g]), gen, ccs_args)])
    return _sorted(torch.cat(kept)) if kept else torch.zeros(0, dtype=torch.long)


def stratum_budgets(sizes: np.ndarray, budget: int) -> np.ndarray:
    """CCS budget: visit strata from smallest to largest, each takes ``min(size, floor(left / strata_left))``.

    Zheng et al. 2023, Algorithm 1 (the budget of small strata flows to the larger ones).
    """
    if budget > int(sizes.sum()):
        raise ValueError(f"cannot keep {budget} examples from strata holding {int(sizes.sum())}")
    out = np.zeros(len(sizes), np.int64)
    order = np.argsort(sizes, kind="stable")
    left, strata_left = budget, len(sizes)
    for j in order:
        take = min(int(sizes[j]), left // strata_left)
        out[j] = take
        left -= take
        strata_left -= 1
    for j in order[::-1]:  # rounding leftovers (rare): largest strata with room first
        extra = min(left, int(sizes[j]) - int(out[j]))
        out[j] += extra
        left -= extra
    return out


def strata_of(s: Tensor, k: int) -> Tensor:
    """Index ``(n,)`` of ``k`` equal-width strata over ``[min(s), max(s)]`` (the maximum goes to the last)."""
    lo, hi = float(s.min()), float(s.max())
    if hi == lo:
        return torch.zeros(len(s), dtype=torch.long)
    return ((s - lo) / (hi - lo) * k).floor().clamp_(max=k - 1).long()


@SELECTORS.register("ccs")
def ccs(scores: Any, keep_fraction: float, beta: float = 0.0, strata: int = 50, cutoff_scores: Any = None,
        seed: int = 0) -> Tensor:
    """Coverage-centric coreset selection (Zheng et al. 2023, Algorithm 1).

    Drop the ``beta * N`` hardest examples by ``cutoff_scores`` (the paper uses AUM; default: ``scores``),
    split the rest into ``strata`` equal-width score ranges and fill them smallest first with
    ``floor(budget / strata left)`` each, sampling uniformly inside a stratum.
    """
    s, f = as_scores(scores), keep_fraction_arg(keep_fraction)
    b = check_nonneg_float(beta, "beta", upper=1.0, upper_open=True)
    k = check_positive_int(strata, "strata")
    cut = s if cutoff_scores is None else as_scores(cutoff_scores, "cutoff_scores")
    check_same_length(len(s), cut, "cutoff_scores")
    n, m = len(s), keep_count(len(s), f)
    n_drop = int(math.floor(b * n))
    if n - n_drop < m:
        raise ValueError(f"beta={beta} drops {n_drop} of {n} examples, leaving fewer than the {m} to keep "
                         f"(keep_fraction={keep_fraction}); use beta <= 1 - keep_fraction")
    return _sorted(ccs_positions(s, cut, m, b, k, _gen(seed)))


def ccs_positions(s: Tensor, cut: Tensor, m: int, beta: float, k: int, gen: torch.Generator) -> Tensor:
    """CCS on one group: cut the ``beta`` hardest by ``cut`` (never below ``m`` left), then ``k`` strata."""
    n = len(s)
    n_drop = min(int(math.floor(beta * n)), n - m)
    rest = torch.sort(hardest(cut, n)[n_drop:]).values  # survivors of the cut-off
    st = strata_of(s[rest], k)
    budgets = stratum_budgets(np.bincount(st.numpy(), minlength=k), m)
    return rest[_balanced_pick(s[rest], st, m, "random", gen, quotas=budgets)]


def box_projection(p: np.ndarray, total: float, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Solve ``min ||x - p||^2`` s.t. ``sum x = total``, ``lower <= x <= upper``.

    The KKT conditions give ``x = clip(p + lam, lower, upper)``; ``lam`` is found by bisection.
    """
    if lower.sum() > total + 1e-9 or upper.sum() < total - 1e-9:
        raise ValueError(f"bounds admit totals in [{lower.sum():.1f}, {upper.sum():.1f}], not {total}")
    lo, hi = float((lower - p).min()) - 1.0, float((upper - p).max()) + 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.clip(p + mid, lower, upper).sum() < total:
            lo = mid
        else:
            hi = mid
    return np.clip(p + hi, lower, upper)


def dbp_quotas(complexity: Any, sizes: np.ndarray, total: int, temperature: float = 0.5,
               min_ratio: float = 0.5) -> np.ndarray:
    """Per-cluster integer budgets: ``softmax(C / tau) * total`` projected on the bounds (Abbas et al. 2024, Eq. 3).

    Bounds: ``min(min_ratio * total / k, size_j) <= x_j <= size_j``; the small quadratic program of
    the paper is solved exactly as a projection, then rounded by largest remainders.
    """
    c = as_scores(complexity, "complexity").numpy()
    check_same_length(len(c), sizes, "cluster sizes", "complexity")
    tau = check_nonneg_float(temperature, "temperature")
    if tau == 0:
        raise ValueError("temperature must be > 0")
    r = check_nonneg_float(min_ratio, "min_ratio", upper=1.0)
    z = c / tau
    p = np.exp(z - z.max())
    p = p / p.sum() * total
    upper = sizes.astype(np.float64)
    lower = np.minimum(r * total / len(c), upper)
    x = box_projection(p, float(total), lower, upper)
    return largest_remainder(x, total, sizes.astype(np.int64))


@SELECTORS.register("dbp")
def dbp(scores: Any, keep_fraction: float, clusters: Any = None, complexity: Any = None,
        temperature: float = 0.5, min_ratio: float = 0.5, within: str = "keep-hard", beta: float = 0.0,
        strata: int = 50, seed: int = 0) -> Tensor:
    """Density-based pruning: per-cluster quotas from complexity, then ``within`` each cluster (Abbas et al. 2024).

    ``scores`` are within-cluster difficulties (e.g. ``prototype``: distance to the centroid),
    ``clusters`` the cluster index of each example, ``complexity`` one value per cluster
    (``cluster_complexity``).
    """
    s, f = as_scores(scores), keep_fraction_arg(keep_fraction)
    if clusters is None or complexity is None:
        raise ValueError("dbp needs clusters (cluster index per example) and complexity (one value per cluster)")
    check_choice(within, "within", WITHIN_RULES)
    ccs_args = _ccs_args(beta, strata, 0.0) if within == "ccs" else None
    cl = as_labels(clusters, len(s), len(complexity), name="clusters")
    sizes = np.bincount(cl.numpy(), minlength=len(complexity))
    quotas = dbp_quotas(complexity, sizes, keep_count(len(s), f), temperature, min_ratio)
    return _balanced_pick(s, cl, int(quotas.sum()), within, _gen(seed), quotas=quotas, ccs_args=ccs_args)


def select(scores: Any, keep_fraction: float, rule: str = "keep-hard", **params: Any) -> Tensor:
    """Kept indices (sorted, unique ``LongTensor``) of ``scores`` at ``keep_fraction`` under the named ``rule``."""
    fn = SELECTORS.get(rule)
    return fn(scores, keep_fraction, **params)
