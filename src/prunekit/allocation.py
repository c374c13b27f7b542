"""Per-layer allocation: the per-layer sparsities that meet one global target.

Every rule returns ``{layer: sparsity}`` whose parameter-weighted mean equals the target within one
unit, with no layer above ``max_layer_sparsity`` (so no layer collapses) and none below 0.
Sparsities are derived from integer keep counts, so ``topk_mask`` reproduces them exactly.

The result is an ``Allocation`` (a plain ``dict`` of sparsities) whose ``binding`` says when the cap
held layers back: which layers sit at ``max_layer_sparsity``, which collapsed (only possible with a cap
of 1.0), and the reached sparsity against the target. Each binding is also logged as a WARNING.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .errors import check_sparsity
from .registry import ALLOCATIONS

Shapes = Mapping[str, tuple[int, ...]]

log = logging.getLogger(__name__)


class Allocation(dict):
    """``{layer: sparsity}``; ``binding`` is what ``max_layer_sparsity`` did (``None`` when it held no layer)."""

    binding: dict[str, Any] | None = None


def describe_binding(b: Mapping[str, Any]) -> str:
    """One line for a log or a report: the layers held at the cap or collapsed, reached vs target."""
    cap, rule, parts = b["max_layer_sparsity"], b["rule"], []
    if b["capped"]:
        more = " ..." if len(b["capped"]) > 8 else ""
        parts.append(f"max_layer_sparsity={cap} binds in the {rule!r} allocation: {len(b['capped'])} of "
                     f"{b['layers']} layers held at the cap {b['capped'][:8]}{more}")
    if b["collapsed"]:
        parts.append(f"the {rule!r} allocation with max_layer_sparsity={cap} prunes layers away entirely (layer "
                     f"collapse): {b['collapsed']}; lower max_layer_sparsity below 1.0 (the default 0.99 keeps "
                     "1% of each layer) or exclude them")
    parts.append(f"reached sparsity {b['reached']:.4f} vs target {b['target']:.4f}")
    if len(b["capped"]) == b["layers"]:
        parts.append("every layer sits at the cap, so the rule and the scores no longer change the per-layer "
                     "sparsities (every criterion gets the same allocation)")
    if b["short"]:
        parts.append("the target is not met: raise max_layer_sparsity (1.0 lets layers collapse) or lower the "
                     "sparsity")
    return "; ".join(parts)


def _result(keep: Mapping[str, int], counts: Mapping[str, int], lo: Mapping[str, int], sparsity: float,
            max_layer_sparsity: float, rule: str, warn: bool,
            unit_sizes: Mapping[str, int] | None = None) -> Allocation:
    """Sparsities of ``keep`` (units per layer), with ``binding`` set and logged when the cap held layers."""
    out = Allocation(counts_to_sparsity(keep, counts))
    capped = [k for k in counts if 0 < lo[k] < counts[k] and keep[k] <= lo[k]]
    collapsed = [k for k in counts if keep[k] == 0 and counts[k] > 0]
    if not capped and not collapsed:
        return out
    w = unit_sizes or {k: 1 for k in counts}
    total = sum(counts[k] * w[k] for k in counts)
    reached = 1.0 - sum(keep[k] * w[k] for k in counts) / total
    unit = max(w.values())
    out.binding = {"rule": rule, "max_layer_sparsity": float(max_layer_sparsity), "target": float(sparsity),
                   "reached": reached, "layers": len(counts), "capped": capped, "collapsed": collapsed,
                   "short": (sparsity - reached) * total > unit}
    if warn:
        log.warning(describe_binding(out.binding))
    return out


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _min_keep(n: int, max_layer_sparsity: float) -> int:
    return min(n, math.ceil(round((1.0 - max_layer_sparsity) * n, 9)))


def _check(sparsity: float, max_layer_sparsity: float, total: int) -> None:
    check_sparsity(sparsity)
    if not 0.0 < float(max_layer_sparsity) <= 1.0:
        raise ValueError(f"max_layer_sparsity must be in (0, 1], got {max_layer_sparsity!r}")
    if sparsity > max_layer_sparsity:
        raise ValueError(
            f"sparsity={sparsity} is above max_layer_sparsity={max_layer_sparsity}: no allocation can reach it"
        )
    if total == 0:
        raise ValueError("allocation needs at least one layer with weights")


def counts_to_sparsity(keep: Mapping[str, int], sizes: Mapping[str, int]) -> dict[str, float]:
    """``{layer: 1 - keep / size}``."""
    return {k: 1.0 - keep[k] / sizes[k] for k in sizes}


def _fix_rounding(keep: dict[str, int], lo: dict[str, int], hi: dict[str, int], budget: int,
                  frac: dict[str, float]) -> dict[str, int]:
    """Move keep counts by one unit at a time until they sum to ``budget``, respecting bounds."""
    diff = budget - sum(keep.values())
    order = sorted(keep, key=lambda k: -frac.get(k, 0.0) if diff > 0 else frac.get(k, 0.0))
    while diff != 0:
        moved = False
        for k in order:
            if diff > 0 and keep[k] < hi[k]:
                keep[k] += 1
                diff -= 1
                moved = True
            elif diff < 0 and keep[k] > lo[k]:
                keep[k] -= 1
                diff += 1
                moved = True
            if diff == 0:
                break
        if not moved:
            break
    return keep


def from_densities(density: Mapping[str, float], sizes: Mapping[str, int], sparsity: float,
                   max_layer_sparsity: float = 0.99, *, rule: str = "densities", warn: bool = True) -> Allocation:
    """Round per-layer densities to keep counts that meet the target exactly, within the bounds."""
    budget = round((1.0 - sparsity) * sum(sizes.values()))
    lo = {k: _min_keep(n, max_layer_sparsity) for k, n in sizes.items()}
    hi = dict(sizes)
    raw = {k: min(max(density[k] * sizes[k], lo[k]), hi[k]) for k in sizes}
    keep = {k: int(math.floor(v)) for k, v in raw.items()}
    keep = {k: max(keep[k], lo[k]) for k in keep}
    frac = {k: raw[k] - math.floor(raw[k]) for k in raw}
    keep = _fix_rounding(keep, lo, hi, budget, frac)
    return _result(keep, sizes, lo, sparsity, max_layer_sparsity, rule, warn)


@ALLOCATIONS.register("uniform")
def uniform(sizes: Mapping[str, int], sparsity: float, max_layer_sparsity: float = 0.99) -> Allocation:
    """Every layer at the target sparsity (rounded per layer to whole weights)."""
    _check(sparsity, max_layer_sparsity, sum(sizes.values()))
    return from_densities({k: 1.0 - sparsity for k in sizes}, sizes, sparsity, max_layer_sparsity, rule="uniform")


@ALLOCATIONS.register("global")
def global_(unit_scores: Mapping[str, Tensor], sparsity: float, max_layer_sparsity: float = 0.99,
            unit_sizes: Mapping[str, int] | None = None, *, rule: str = "global", warn: bool = True) -> Allocation:
    """One ranking of units across layers; each layer first keeps its top ``1 - max_layer_sparsity``.

    ``unit_scores[layer]`` is a flat tensor of unit scores; ``unit_sizes[layer]`` the weights per unit
    (1 for unstructured). The rest of the keep budget goes to the highest remaining scores overall.
    """
    unit_sizes = dict(unit_sizes or {k: 1 for k in unit_scores})
    counts = {k: v.numel() for k, v in unit_scores.items()}
    total = sum(counts[k] * unit_sizes[k] for k in counts)
    _check(sparsity, max_layer_sparsity, total)
    mandatory = {k: _min_keep(n, max_layer_sparsity) for k, n in counts.items()}
    budget = round((1.0 - sparsity) * total) - sum(mandatory[k] * unit_sizes[k] for k in counts)
    names, rest, cost = [], [], []
    for i, (k, s) in enumerate(unit_scores.items()):
        order = torch.argsort(s.reshape(-1).float(), descending=True, stable=True)
        tail = s.reshape(-1).float()[order[mandatory[k]:]].cpu()
        rest.append(tail)
        names.append(torch.full((tail.numel(),), i, dtype=torch.long))
        cost.append(torch.full((tail.numel(),), unit_sizes[k], dtype=torch.long))
    scores, layer, costs = torch.cat(rest), torch.cat(names), torch.cat(cost)
    order = torch.argsort(scores, descending=True, stable=True)
    take = int((costs[order].cumsum(0) <= max(budget, 0)).sum())
    extra = torch.bincount(layer[order[:take]], minlength=len(counts))
    keep = {k: mandatory[k] + int(extra[i]) for i, k in enumerate(counts)}
    return _result(keep, counts, mandatory, sparsity, max_layer_sparsity, rule, warn, unit_sizes)


def _erk_density_raw(shape: tuple[int, ...], kernel: bool, experts: bool = False) -> float:
    """(sum of dims) / (product of dims): ERK with kernel dims, ER with only in/out channels.

    A fused expert tensor ``(E, out, in)`` (``experts=True``) is E matrices ``(out, in)``: its scale is that
    of one of them, ``(out + in) / (out * in)``.
    """
    body = tuple(shape[1:]) if experts else tuple(shape)
    dims = body if kernel or len(body) <= 2 else body[:2]
    return sum(dims) / math.prod(dims)


def _erk(shapes: Shapes, sparsity: float, max_layer_sparsity: float, kernel: bool,
         groups: Mapping[str, int] | None) -> Allocation:
    groups = groups or {}
    sizes = {k: _numel(s) for k, s in shapes.items()}
    _check(sparsity, max_layer_sparsity, sum(sizes.values()))
    raw = {k: _erk_density_raw(tuple(s), kernel, k in groups) for k, s in shapes.items()}
    floor = 1.0 - max_layer_sparsity
    fixed: dict[str, float] = {}
    target = (1.0 - sparsity) * sum(sizes.values())
    for _ in range(len(shapes) + 1):
        free = [k for k in shapes if k not in fixed]
        if not free:
            break
        left = target - sum(fixed[k] * sizes[k] for k in fixed)
        eps = left / sum(raw[k] * sizes[k] for k in free)
        over = [k for k in free if eps * raw[k] > 1.0]
        under = [k for k in free if eps * raw[k] < floor]
        if not over and not under:
            fixed.update({k: eps * raw[k] for k in free})
            break
        fixed.update({k: 1.0 for k in over})
        if not over:
            fixed.update({k: floor for k in under})
    return from_densities(fixed, sizes, sparsity, max_layer_sparsity, rule="erk" if kernel else "er")


@ALLOCATIONS.register("erk")
def erk(shapes: Shapes, sparsity: float, max_layer_sparsity: float = 0.99,
        groups: Mapping[str, int] | None = None) -> Allocation:
    """Erdos-Renyi-Kernel: density proportional to sum of dims / product of dims (Evci et al. 2020, RigL).

    ``groups``: ``{layer: E}`` of the fused ``(E, out, in)`` expert tensors, each E matrices ``(out, in)``.
    """
    return _erk(shapes, sparsity, max_layer_sparsity, kernel=True, groups=groups)


@ALLOCATIONS.register("er")
def er(shapes: Shapes, sparsity: float, max_layer_sparsity: float = 0.99,
       groups: Mapping[str, int] | None = None) -> Allocation:
    """Erdos-Renyi: density proportional to (n_in + n_out) / (n_in * n_out) (Mocanu et al. 2018, SET).

    ``groups``: ``{layer: E}`` of the fused ``(E, out, in)`` expert tensors, each E matrices ``(out, in)``.
    """
    return _erk(shapes, sparsity, max_layer_sparsity, kernel=False, groups=groups)


@ALLOCATIONS.register("lamp")
def lamp(weights: Mapping[str, Tensor], sparsity: float, max_layer_sparsity: float = 0.99) -> Allocation:
    """LAMP: global ranking of layer-adaptive magnitude scores (Lee et al. 2021, "Layer-adaptive sparsity")."""
    from .scores import lamp as lamp_score

    return global_({k: lamp_score(w).reshape(-1) for k, w in weights.items()}, sparsity, max_layer_sparsity,
                   rule="lamp")


@ALLOCATIONS.register("owl")
def owl(outlier_ratios: Mapping[str, float], sizes: Mapping[str, int], sparsity: float, lam: float = 0.08,
        max_layer_sparsity: float = 0.99) -> Allocation:
    """OWL: layers with more outliers keep more (Yin et al. 2024, "Outlier Weighed Layerwise sparsity").

    Densities are ``1 - S + 2*lam*(D_l - min D)/(max D - min D)`` shifted so their parameter-weighted
    mean is ``1 - S``; so sparsities lie in about ``[S - lam, S + lam]``.
    """
    _check(sparsity, max_layer_sparsity, sum(sizes.values()))
    if not 0.0 <= lam < 1.0:
        raise ValueError(f"lam (OWL lambda) must be in [0, 1), got {lam!r}")
    if set(outlier_ratios) != set(sizes):
        raise ValueError("outlier_ratios and sizes must name the same layers")
    d = torch.tensor([float(outlier_ratios[k]) for k in sizes], dtype=torch.float64)
    n = torch.tensor([float(sizes[k]) for k in sizes], dtype=torch.float64)
    spread = float(d.max() - d.min())
    z = (d - d.min()) / spread * 2 * lam if spread > 0 else torch.zeros_like(d)
    dens = z - (z * n).sum() / n.sum() + (1.0 - sparsity)
    return from_densities(dict(zip(sizes, dens.tolist())), sizes, sparsity, max_layer_sparsity, rule="owl")


def allocate(model_or_scores: nn.Module | Mapping[str, Tensor], sparsity: float, rule: str = "uniform", *,
             max_layer_sparsity: float = 0.99, **kwargs) -> Allocation:
    """Per-layer sparsities for ``rule`` over a model's prunable weights or a dict of weights/scores.

    For ``global`` the dict values are scores (a model means magnitude); for ``lamp`` they are weights.
    ``result.binding`` (also logged) says when ``max_layer_sparsity`` held layers back.
    """
    fn = ALLOCATIONS.get(rule)
    groups = kwargs.pop("groups", None)
    if isinstance(model_or_scores, nn.Module):
        from .layers import classify

        ledger = classify(model_or_scores)
        groups = {k: w.groups for k, w in ledger.prunable.items() if w.experts}
        tensors = {k: p.detach() for k, p in ledger.parameters(model_or_scores).items()}
        if rule == "global":
            tensors = {k: v.abs() for k, v in tensors.items()}
    else:
        tensors = dict(model_or_scores)
    if rule == "uniform":
        return uniform({k: v.numel() for k, v in tensors.items()}, sparsity, max_layer_sparsity)
    if rule in ("erk", "er"):
        return fn({k: tuple(v.shape) for k, v in tensors.items()}, sparsity, max_layer_sparsity, groups=groups)
    if rule == "global":
        return global_({k: v.reshape(-1) for k, v in tensors.items()}, sparsity, max_layer_sparsity)
    if rule == "lamp":
        return lamp(tensors, sparsity, max_layer_sparsity)
    if rule == "owl":
        sizes = {k: v.numel() for k, v in tensors.items()}
        return owl(kwargs["outlier_ratios"], sizes, sparsity, kwargs.get("lam", 0.08), max_layer_sparsity)
    return fn(tensors, sparsity, max_layer_sparsity, **kwargs)


def weighted_sparsity(alloc: Mapping[str, float], sizes: Mapping[str, int]) -> float:
    """Parameter-weighted mean sparsity of an allocation."""
    return sum(alloc[k] * sizes[k] for k in sizes) / sum(sizes.values())
