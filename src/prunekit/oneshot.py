"""The one-shot engine shared by every weight criterion: score, allocate, exact top-k under the pattern, attach.

A one-shot method is a ``Criterion`` config plus a function ``fn(model, config, data) -> Report`` registered in
``METHODS`` (kind ``"oneshot"``). Magnitude, random and Taylor live here; SNIP, GraSP and SynFlow in
``training/pai.py`` reuse :func:`prune_scored_`. Every path scores every prunable weight, allocates per-layer
sparsities (layer or global scope, or a named allocation rule), takes the exact top-k mask under the pattern
and attaches the masks. :func:`weight_mask` is that top-k for one weight, seen through the ledger (N:M and
Block along the input dimension, each fused expert on its own): the training callbacks use it too.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import allocation as alloc
from . import scores as _scores  # noqa: F401  (registers the criteria)
from .config import Config
from .datasets import as_dataset
from .errors import check_choice
from .layers import Ledger, classify
from .masks import DEFAULT_EXCLUDE, LayerReport, Report, attach, attached
from .patterns import NM, Pattern, Unstructured, check_pattern_fits, pattern_sparsity, topk_mask, unit_scores
from .registry import ALLOCATIONS, METHODS, SCORES

log = logging.getLogger(__name__)
SCOPES = ("layer", "global")


@dataclass
class Criterion(Config):
    """Shared fields of the one-shot criteria."""

    sparsity: float | None = None
    pattern: Pattern = field(default_factory=Unstructured)
    scope: str = "layer"
    allocation: str | None = None
    max_layer_sparsity: float = 0.99
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    include: list[str] | None = None

    def validate(self) -> None:
        self.sparsity = pattern_sparsity(self.pattern, self.sparsity)
        check_choice(self.scope, "scope", SCOPES)
        if self.allocation is not None:
            check_choice(self.allocation, "allocation", [n for n in ALLOCATIONS.names() if n != "owl"])
            if self.scope == "global" and self.allocation != "global":
                raise ValueError(f"scope='global' conflicts with allocation={self.allocation!r}; use scope='layer'")
        if not 0.0 < float(self.max_layer_sparsity) <= 1.0:
            raise ValueError(f"max_layer_sparsity must be in (0, 1], got {self.max_layer_sparsity!r}")
        self.exclude = list(self.exclude)

    @property
    def rule(self) -> str:
        """The allocation rule in force: ``global`` for global scope, else the named rule or ``uniform``."""
        return "global" if self.scope == "global" else (self.allocation or "uniform")


_Criterion = Criterion  # the former private name, kept for compatibility


@dataclass
class Magnitude(Criterion):
    """One-shot magnitude pruning |W| (Han et al. 2015), layer-wise or global, any pattern."""


@dataclass
class Random(Criterion):
    """Random pruning with a seeded generator (Liu et al. 2022, "The unreasonable effectiveness of random pruning")."""

    seed: int = 0


@dataclass
class Taylor(Criterion):
    """First-order Taylor pruning |W * dL/dW| (Molchanov et al. 2019), gradients averaged over ``batches``."""

    batches: int = 4
    batch_size: int = 128

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.batches, int) or self.batches < 1:
            raise ValueError(f"batches must be a positive integer, got {self.batches!r}")


def _check_weights(ledger: Ledger, params: dict[str, nn.Parameter], pattern: Pattern) -> None:
    if not params:
        raise ValueError("the model has no prunable weights (Linear, Conv, GPT-2 Conv1D, MultiheadAttention, "
                         f"RNN, MoE experts); kept by rule: {ledger.kept_by_reason()}")
    misfits = []
    for name, p in params.items():
        if not torch.isfinite(p.detach()).all():
            raise ValueError(f"weight {name} contains NaN or Inf values; fix the model before pruning")
        try:
            check_pattern_fits(ledger.prunable[name].as_matrices(p.detach(), keep_kernel=True).shape[1:], pattern,
                               name)
        except ValueError as e:
            misfits.append((name.rpartition(".")[0] or name, str(e)))
    if len(misfits) == 1:
        raise ValueError(misfits[0][1])
    if misfits:  # every layer the pattern cannot tile, in one message
        mods = [m for m, _ in misfits]
        raise ValueError(f"{misfits[0][1]}; {len(misfits)} layers do not fit pattern {pattern}: {', '.join(mods)}; "
                         f"leave them dense with exclude={mods!r} (CLI: {' '.join('--exclude ' + m for m in mods)})")


def _oriented(ledger: Ledger, name: str, t: Tensor) -> Tensor:
    """The pattern view of a weight-shaped tensor: ``(out, in, *k)``, experts stacked as ``(E * out, in)``."""
    return ledger.prunable[name].as_matrices(t, keep_kernel=True).flatten(0, 1)


def _topk(ledger: Ledger, name: str, scores: Tensor, target: float, pattern: Pattern,
          allow_collapse: bool = False) -> Tensor:
    """Exact top-k of each matrix of ``name`` (each expert on its own), as a mask in the weight's layout.

    A target of 1.0 for the whole tensor (layer collapse) is an error naming it unless ``allow_collapse``."""
    if target >= 1.0 and not allow_collapse:
        topk_mask(scores, target, pattern, name=name)  # raises, naming the layer and the way out
    info = ledger.prunable[name]
    mats = scores.unflatten(0, (info.groups, -1))  # (G, out, in, *k)
    targets = _expert_targets(info.groups, unit_scores(mats[0], pattern).numel(), target, pattern)
    per = [topk_mask(s, t, pattern, name=name) if t < 1.0 else torch.zeros_like(s, dtype=torch.bool)
           for s, t in zip(mats, targets)]  # t == 1: the tensor keeps fewer units than it has experts
    return info.from_matrices(torch.stack(per))


def weight_mask(ledger: Ledger, name: str, scores: Tensor, sparsity: float | None,
                pattern: Pattern = Unstructured(), allow_collapse: bool = False) -> Tensor:
    """Exact top-k keep-mask of weight ``name`` from scores shaped like it, in the weight's own layout.

    Seen through the ledger: N:M groups and Block tiles run along the input dimension (GPT-2 ``Conv1D``,
    stored ``(in, out)``, is transposed first) and each expert of a fused ``(E, out, in)`` tensor keeps its
    own share; on a plain Linear / Conv weight this is ``topk_mask`` itself. N:M fixes the sparsity at
    ``1 - n/m`` (``None`` accepted). Sparsity 1.0 (the layer pruned away) is an error naming the layer,
    or with ``allow_collapse`` an all-False mask.
    """
    target = pattern_sparsity(pattern, sparsity, f"sparsity of {name}") if isinstance(pattern, NM) or sparsity is None \
        else float(sparsity)
    return _topk(ledger, name, _oriented(ledger, name, scores.detach()), target, pattern, allow_collapse)


def unit_view(ledger: Ledger, name: str, scores: Tensor, pattern: Pattern = Unstructured()) -> Tensor:
    """Flat unit scores of weight ``name`` under ``pattern``, units taken in the ledger's orientation."""
    return unit_scores(_oriented(ledger, name, scores.detach()), pattern)


def expert_counts(ledger: Ledger) -> dict[str, int]:
    """``{name: E}`` of the fused ``(E, out, in)`` expert tensors of ``ledger`` (what ERK / ER take as ``groups``)."""
    return {k: w.groups for k, w in ledger.prunable.items() if w.experts}


def _expert_targets(g: int, units: int, target: float, pattern: Pattern) -> list[float]:
    """Per-matrix sparsities whose kept units add up to the tensor's exact count, spread evenly over ``g``."""
    if isinstance(pattern, NM) or g == 1:
        return [target] * g
    keep = int(round((1.0 - target) * g * units))  # what one top-k over the whole tensor keeps
    base, extra = divmod(keep, g)
    return [1.0 - (base + (e < extra)) / units for e in range(g)]


def _stats_for(model: nn.Module, config: Config, data: Any, params: dict[str, nn.Parameter]) -> dict[str, dict]:
    if isinstance(config, Random):
        gen = torch.Generator().manual_seed(int(config.seed))
        return {k: {"generator": gen} for k in params}
    if isinstance(config, Taylor):
        grads = mean_gradients(model, data, params, config.batches, config.batch_size)
        return {k: {"grad": grads[k]} for k in params}
    return {k: {} for k in params}


def mean_gradients(model: nn.Module, data: Any, params: dict[str, nn.Parameter], batches: int,
                   batch_size: int = 128,
                   loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> dict[str, Tensor]:
    """Mean gradient of the loss w.r.t. ``params`` over ``batches`` batches of ``data`` ((X, y) or a Dataset)."""
    if data is None:
        raise ValueError("this method needs data=(X, y) or a Dataset to compute gradients; got data=None")
    from torch.utils.data import DataLoader

    ds = as_dataset(data)
    if len(ds) == 0:
        raise ValueError("data is empty: gradient-based scores need at least one batch")
    loss_fn = loss_fn or nn.functional.cross_entropy
    dev = next(model.parameters()).device
    acc = {k: torch.zeros_like(p) for k, p in params.items()}
    was_training, n = model.training, 0
    model.eval()
    for x, y in DataLoader(ds, batch_size=batch_size, shuffle=False):
        if n >= batches:
            break
        model.zero_grad(set_to_none=True)
        loss_fn(model(x.to(dev)), y.to(dev)).backward()
        for k, p in params.items():
            if p.grad is not None:
                acc[k] += p.grad.detach()
        n += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {k: v / n for k, v in acc.items()}


def _allocate(config: Criterion, scores: dict[str, Tensor], params: dict[str, nn.Parameter],
              groups: dict[str, int] | None = None) -> dict[str, float]:
    pattern, s = config.pattern, float(config.sparsity)
    if isinstance(pattern, NM):
        return {k: pattern.sparsity for k in params}
    rule = config.rule
    if rule == "global":
        units = {k: unit_scores(v, pattern) for k, v in scores.items()}
        sizes = {k: params[k].numel() // units[k].numel() for k in params}
        return alloc.global_(units, s, config.max_layer_sparsity, unit_sizes=sizes)
    if rule == "lamp":
        return alloc.lamp({k: p.detach() for k, p in params.items()}, s, config.max_layer_sparsity)
    if rule in ("erk", "er"):
        return ALLOCATIONS.get(rule)({k: tuple(p.shape) for k, p in params.items()}, s, config.max_layer_sparsity,
                                     groups=groups)
    return alloc.uniform({k: p.numel() for k, p in params.items()}, s, config.max_layer_sparsity)


def prune_scored_(model: nn.Module, config: Criterion, score_name: str, data: Any = None,
                  stats: dict[str, dict] | None = None) -> Report:
    """Shared one-shot path: score, allocate, top-k under the pattern, attach. Returns the report."""
    t0 = time.perf_counter()
    ledger = classify(model, exclude=config.exclude, include=config.include)
    params = ledger.parameters(model)
    _check_weights(ledger, params, config.pattern)
    score_fn = SCORES.get(score_name)
    stats = stats if stats is not None else _stats_for(model, config, data, params)
    old = attached(model)
    scores = {}
    for k, p in params.items():
        s = score_fn(p.detach(), stats.get(k, {})).float()
        if old is not None and k in old.masks:
            s = s.masked_fill(~old.masks[k], -math.inf)  # what is pruned stays pruned
        scores[k] = _oriented(ledger, k, s)
    targets = _allocate(config, scores, params, expert_counts(ledger))
    masks, layers = {}, []
    for k, p in params.items():
        t1 = time.perf_counter()
        m = _topk(ledger, k, scores[k], targets[k], config.pattern)
        masks[k] = m
        layers.append(LayerReport(k, list(p.shape), p.numel(), 1.0 - float(m.sum()) / m.numel(), targets[k],
                                  time.perf_counter() - t1))
    ms = attach(model, masks)
    ledger.log_kept(log)
    log.info("pruned %d tensors: %s", len(layers), ledger.measure(model).line())
    extra = {}
    binding = getattr(targets, "binding", None)
    if binding:
        extra["max_layer_sparsity_binds"] = binding
    return Report(config.to_dict(), layers, time.perf_counter() - t0, ms, extra=extra, ledger=ledger)


@METHODS.register("magnitude", kind="oneshot", config=Magnitude)
def _magnitude(model: nn.Module, config: Magnitude, data: Any = None) -> Report:
    return prune_scored_(model, config, "magnitude", data)


@METHODS.register("random", kind="oneshot", config=Random)
def _random(model: nn.Module, config: Random, data: Any = None) -> Report:
    return prune_scored_(model, config, "random", data)


@METHODS.register("taylor", kind="oneshot", config=Taylor)
def _taylor(model: nn.Module, config: Taylor, data: Any = None) -> Report:
    return prune_scored_(model, config, "taylor", data)
