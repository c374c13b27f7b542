"""Choosing a selector's hyper-parameter on held-out data: CCS's ``beta``, the noise-aware ``flag_fraction``.

Zheng et al. 2023 (CCS, "Coverage-centric Coreset Selection for High Pruning Rates", ICLR) treat
the cut-off rate ``beta`` as a hyper-parameter found by grid search. ``choose_beta`` runs that grid
search against a caller-supplied validation metric, so the test split is never looked at: the
caller trains on each candidate subset of a training split and reports accuracy on a split held out
from training.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .checks import as_scores, check_nonneg_float, keep_fraction_arg
from .select import select

log = logging.getLogger(__name__)

BETA_GRID = (0.0, 0.1, 0.2, 0.3, 0.4)
BETA_RULES = ("ccs", "class-balanced")


@dataclass(frozen=True)
class BetaChoice:
    """Result of ``choose_beta``: the chosen ``beta``, each evaluated beta's value, the betas skipped."""

    beta: float
    values: dict[float, float]
    skipped: tuple[float, ...]


def _betas_arg(betas: Sequence[float], name: str = "betas") -> list[float]:
    """``betas`` as a sorted list of unique numbers in [0, 1), or a ``ValueError`` naming ``name``."""
    if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or len(betas) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of numbers in [0, 1), got {betas!r}")
    vals = [check_nonneg_float(b, name, upper=1.0, upper_open=True) for b in betas]
    if len(set(vals)) != len(vals):
        raise ValueError(f"{name} must not repeat a value, got {list(betas)!r}")
    return sorted(vals)


def _rule_params(rule: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check that ``rule`` is a CCS rule and ``params`` leave ``beta`` to the search."""
    if rule not in BETA_RULES:
        raise ValueError(f"rule must be one of {', '.join(map(repr, BETA_RULES))} (a rule with a CCS cut-off), "
                         f"got {rule!r}")
    if rule == "class-balanced" and params.get("within") != "ccs":
        raise ValueError("rule 'class-balanced' has a beta only with within='ccs'; pass within='ccs'")
    if "beta" in params:
        raise ValueError("beta is what choose_beta searches; pass the candidates as betas=..., not beta=")
    return params


def choose_beta(scores: Any, keep_fraction: float, evaluate: Callable[[Tensor], float],
                betas: Sequence[float] = BETA_GRID, rule: str = "ccs", **params: Any) -> BetaChoice:
    """Grid-search CCS's hard cut-off ``beta`` by a validation metric (Zheng et al. 2023: beta by grid search).

    For every candidate ``beta`` (``betas <= 1 - keep_fraction``; larger ones would cut more than the
    examples not kept and are skipped), select ``select(scores, keep_fraction, rule, beta=beta,
    **params)`` and call ``evaluate(kept_indices)``, which returns the caller's validation metric
    (higher = better; e.g. accuracy on a split held out from training of a model trained on the kept
    examples). Returns the beta with the highest value, the smaller beta on ties (less cut), with
    every evaluated beta's value. ``rule`` is ``"ccs"`` or ``"class-balanced"`` with ``within="ccs"``;
    ``params`` go to ``select`` (e.g. ``strata``, ``seed``, ``labels``, ``cutoff_scores``).
    """
    s, f = as_scores(scores), keep_fraction_arg(keep_fraction)
    if not callable(evaluate):
        raise TypeError(f"evaluate must be a callable kept_indices -> float, got {type(evaluate).__name__}")
    p = _rule_params(rule, dict(params))
    best, values, skipped = _grid_search("beta", _betas_arg(betas), list(betas), f, evaluate,
                                         lambda b: select(s, f, rule, beta=b, **p))
    return BetaChoice(beta=best, values=values, skipped=skipped)


FLAG_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


@dataclass(frozen=True)
class FlagChoice:
    """Result of ``choose_flag_fraction``: the chosen fraction, each evaluated fraction's value, those skipped."""

    flag_fraction: float
    values: dict[float, float]
    skipped: tuple[float, ...]


def choose_flag_fraction(scores: Any, keep_fraction: float, evaluate: Callable[[Tensor], float],
                         fractions: Sequence[float] = FLAG_GRID, **params: Any) -> FlagChoice:
    """Grid-search the ``noise-aware`` rule's ``flag_fraction`` by a validation metric, as ``choose_beta`` does.

    For every candidate fraction ``<= 1 - keep_fraction`` (a larger one would be capped there, the same
    subset), select ``select(scores, keep_fraction, "noise-aware", flag_fraction=fr, **params)`` and call
    ``evaluate(kept_indices)`` (higher = better, e.g. accuracy on a split held out from training).
    Returns the best fraction, the smaller on ties (less dropped), and every value. ``params`` go to
    the rule (``flag_scores``, ``then``, ``beta``, ``strata``, ``seed``); ``threshold`` and
    ``flag_fraction`` are not allowed there.
    """
    s, f = as_scores(scores), keep_fraction_arg(keep_fraction)
    if not callable(evaluate):
        raise TypeError(f"evaluate must be a callable kept_indices -> float, got {type(evaluate).__name__}")
    for bad in ("threshold", "flag_fraction"):
        if bad in params:
            raise ValueError(f"{bad} is not a parameter here: choose_flag_fraction searches flag_fraction; pass "
                             "the candidates as fractions=...")
    best, values, skipped = _grid_search("flag_fraction", _betas_arg(fractions, "fractions"), list(fractions), f,
                                         evaluate, lambda fr: select(s, f, "noise-aware", flag_fraction=fr, **params))
    return FlagChoice(flag_fraction=best, values=values, skipped=skipped)


def _grid_search(name: str, grid: list[float], given: list[float], keep: float, evaluate: Callable[[Tensor], float],
                 pick: Callable[[float], Tensor]) -> tuple[float, dict[float, float], tuple[float, ...]]:
    """Evaluate ``pick(v)`` for every ``v`` of ``grid`` that is ``<= 1 - keep`` (a larger one is capped there:
    the same subset); return the best ``v`` (the smaller on ties), every value and the skipped ``v``."""
    usable = [v for v in grid if v <= 1.0 - keep + 1e-12]
    skipped = tuple(v for v in grid if v not in usable)
    if not usable:
        raise ValueError(f"every {name} in {given} exceeds 1 - keep_fraction = {1.0 - keep:.4g}; "
                         f"include a {name} <= 1 - keep_fraction (0.0 always fits)")
    if skipped:
        log.info("choosing %s: skipped %s above 1 - keep_fraction = %.4g", name, list(skipped), 1.0 - keep)
    values = {v: _value(evaluate, pick(v), f"{name}={v}") for v in usable}
    best = max(usable, key=lambda v: (values[v], -v))  # highest value; ties -> the smaller
    log.info("choosing %s: %s -> %.3g", name, values, best)
    return best, values, skipped


def _value(evaluate: Callable[[Tensor], float], kept: Tensor, what: str) -> float:
    """``evaluate(kept)`` as a float, or a ``ValueError`` if it is not a finite number."""
    v = evaluate(kept)
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
        raise ValueError(f"evaluate must return a finite number, got {v!r} for {what}")
    return float(v)
