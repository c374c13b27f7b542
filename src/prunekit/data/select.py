"""Selectors: ``select(scores, keep_fraction, rule, **params) -> LongTensor`` of kept indices, sorted and unique.

Scores are difficulties (higher = harder). Rules are named: ``keep-hard`` keeps the highest scores,
``keep-easy`` the lowest; ``random`` ignores them; ``class-balanced`` applies a rule per class;
``ccs`` samples strata over the score range after a hard cut-off; ``dbp`` sets per-cluster quotas
from cluster complexity; ``noise-aware`` first drops the examples flagged as mislabeled (AUM or loss),
then applies ``random`` or ``ccs`` to the rest. Ties break toward the lower index, so every rule is deterministic.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
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

log = logging.getLogger(__name__)

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


NOISE_THEN_RULES = ("random", "ccs", "keep-easy", "keep-hard")
DEFAULT_FLAG_FRACTION = 0.1


@dataclass(frozen=True)
class NoiseFlags:
    """Which examples ``flag_noisy`` drops: ``mask`` (N,) bool, the ``rule`` used, its cap if it bound."""

    mask: Tensor
    rule: str  # "threshold" or "fraction"
    threshold: float | None
    wanted: int  # examples the rule flagged before the cap
    capped: bool  # True when dropping all of them would leave fewer than the examples to keep

    @property
    def num_flagged(self) -> int:
        """Examples actually dropped (after the cap)."""
        return int(self.mask.sum())

    def summary(self) -> dict[str, Any]:
        """JSON-ready description for manifests and logs."""
        return {"rule": self.rule, "threshold": self.threshold, "flagged_by_rule": self.wanted,
                "dropped": self.num_flagged, "capped": self.capped}


def aum_threshold(threshold_scores: Any, percentile: float = 99.0) -> float:
    """Difficulty cut-off from threshold samples: ``-alpha`` with ``alpha`` the ``percentile`` of their AUM.

    Pleiss et al. 2020, Sec. 3: examples re-labelled to an extra, non-existent class ("threshold
    samples") are mislabeled by construction; an example whose AUM (Eq. 2,
    ``AUM = 1/T sum_t z_y^(t) - max_{i != y} z_i^(t)``) is at most ``alpha`` = the 99th percentile of
    their AUMs is flagged. ``threshold_scores`` are the threshold samples' difficulties ``-AUM`` (the
    ``aum`` score); the returned value is in the same orientation: flag where ``-AUM >= -alpha``.
    """
    d = as_scores(threshold_scores, "threshold_scores").double()
    p = check_nonneg_float(percentile, "percentile", upper=100.0)
    return -float(torch.quantile(-d, p / 100.0))


def threshold_samples(labels: Any, num_classes: int, seed: int = 0,
                      count: int | None = None) -> tuple[Tensor, Tensor]:
    """Labels with ``count`` (default ``N // (C + 1)``) random examples moved to a new class ``C``; the mask.

    Pleiss et al. 2020, Sec. 3: train a ``C + 1``-class network on these labels, read the AUM of the
    re-labelled examples and pass their ``aum`` scores to ``aum_threshold``. Repeat with a disjoint
    set to score the examples used as threshold samples (the paper trains twice).
    """
    c = check_positive_int(num_classes, "num_classes")
    y = as_labels(labels, len(torch.as_tensor(labels)), c)
    n = len(y)
    k = n // (c + 1) if count is None else check_positive_int(count, "count")
    if k > n:
        raise ValueError(f"count={count} exceeds the {n} examples")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[uniform(n, k, _gen(seed))] = True
    return torch.where(mask, torch.full_like(y, c), y), mask


def flag_noisy(flag_scores: Any, num_kept: int, flag_fraction: float | None = None,
               threshold: float | None = None) -> NoiseFlags:
    """Flag likely mislabeled examples by a difficulty (``-AUM`` or loss): a ``threshold`` or a top fraction.

    ``threshold``: flag every example with ``flag_scores >= threshold`` (``aum_threshold`` gives
    Pleiss et al.'s); else flag the ``floor(flag_fraction * N)`` highest (ties: lower index first).
    Never flags more than ``N - num_kept`` (the least suspicious of the flagged are kept then);
    a binding cap is logged and reported (``capped``).
    """
    d = as_scores(flag_scores, "flag_scores")
    n = len(d)
    if threshold is not None and flag_fraction is not None:
        raise ValueError("pass either threshold or flag_fraction, not both")
    if threshold is not None:
        t = float(threshold)
        if not math.isfinite(t):
            raise ValueError(f"threshold must be a finite number, got {threshold!r}")
        wanted, rule = int((d >= t).sum()), "threshold"
    else:
        fr = DEFAULT_FLAG_FRACTION if flag_fraction is None else flag_fraction
        fr = check_nonneg_float(fr, "flag_fraction", upper=1.0, upper_open=True)
        wanted, rule, t = int(math.floor(fr * n + 1e-9)), "fraction", None
    allowed = min(wanted, n - num_kept)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[hardest(d, allowed)] = True  # the `wanted` flagged are the `wanted` hardest; keep the cap's hardest
    if allowed < wanted:
        log.warning("noise-aware: %d examples flagged but only %d may be dropped to keep %d of %d; the %d least "
                    "suspicious flagged examples stay in the pool", wanted, allowed, num_kept, n, wanted - allowed)
    return NoiseFlags(mask=mask, rule=rule, threshold=t, wanted=wanted, capped=allowed < wanted)


@SELECTORS.register("noise-aware")
def noise_aware(scores: Any, keep_fraction: float, flag_scores: Any = None, flag_fraction: float | None = None,
                threshold: float | None = None, then: str = "random", beta: float = 0.0, strata: int = 50,
                seed: int = 0) -> Tensor:
    """Noisy labels: drop the examples flagged as mislabeled first, then ``then`` (random or CCS) on the rest.

    1. Flag (``flag_noisy``) by ``flag_scores`` (default ``scores``), a difficulty such as ``-AUM``
       (Pleiss et al. 2020, Eq. 2: ``AUM(x, y) = 1/T sum_t [z_y^(t) - max_{i != y} z_i^(t)]``, low for
       mislabeled examples) or the mean training loss: the examples with ``flag_scores >= threshold``
       (``aum_threshold`` of threshold samples, Pleiss et al. Sec. 3) or the ``flag_fraction`` highest
       (default 0.1; choose it on held-out data with ``tune.choose_flag_fraction``). At most
       ``N - keep`` are dropped (logged when the cap binds).
    2. Keep ``round(keep_fraction * N)`` (as every rule) of the unflagged examples by
       ``then``: ``random`` (uniform), ``ccs`` (Zheng et al. 2023, Algorithm 1: ``strata`` equal-width
       strata of ``scores``, filled smallest first with ``floor(budget / strata left)``, after an
       extra cut-off of the ``beta * N`` hardest survivors), ``keep-easy`` or ``keep-hard``.

    Unlike ``keep-hard``, which keeps mostly the flipped labels at low keep, the hardest examples here
    are removed only as far as the flagging rule says, and the budget is spread over the rest.
    """
    s, f = as_scores(scores), keep_fraction_arg(keep_fraction)
    d = s if flag_scores is None else as_scores(flag_scores, "flag_scores")
    check_same_length(len(s), d, "flag_scores")
    check_choice(then, "then", NOISE_THEN_RULES)
    m = keep_count(len(s), f)
    flags = flag_noisy(d, m, flag_fraction, threshold)
    rest = torch.nonzero(~flags.mask).flatten()
    ccs_args = None
    if then == "ccs":
        b = check_nonneg_float(beta, "beta", upper=1.0, upper_open=True)
        # beta is a fraction of all N examples, as in `ccs`; ccs_positions never cuts below m survivors
        ccs_args = {"beta": b * len(s) / len(rest), "strata": check_positive_int(strata, "strata")}
    log.info("noise-aware: dropped %d flagged (%s), %s keeps %d of the %d left", flags.num_flagged, flags.rule, then,
             m, len(rest))
    return _sorted(rest[_pick(then, s[rest], m, _gen(seed), ccs_args)])


def select(scores: Any, keep_fraction: float, rule: str = "keep-hard", **params: Any) -> Tensor:
    """Kept indices (sorted, unique ``LongTensor``) of ``scores`` at ``keep_fraction`` under the named ``rule``."""
    fn = SELECTORS.get(rule)
    return fn(scores, keep_fraction, **params)
