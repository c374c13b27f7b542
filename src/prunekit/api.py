"""The in-place verbs: ``prune_(model, config, data=None) -> Report`` and ``sparsity_report(model)``.

A method is a config dataclass (registered with ``register_config``) plus a function registered in
``METHODS`` under the same name, ``fn(model, config, data) -> Report``; ``prune_`` dispatches on the
config's type. The one-shot criteria of this module (magnitude, random, Taylor) share one path:
score every prunable weight, allocate per-layer sparsities (layer or global scope, or a named
allocation rule), take the exact top-k mask under the pattern, attach the masks.
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
from .config import Config, register_config
from .errors import check_choice
from .layers import Ledger, classify
from .masks import (
    DEFAULT_EXCLUDE,
    LayerReport,
    Report,
    attach,
    attached,
    layer_sparsity,
)
from .patterns import NM, Pattern, Unstructured, check_pattern_fits, pattern_sparsity, topk_mask, unit_scores
from .registry import ALLOCATIONS, METHODS, SCORES

log = logging.getLogger(__name__)
SCOPES = ("layer", "global")


@dataclass
class _Criterion(Config):
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


@register_config("magnitude")
@dataclass
class Magnitude(_Criterion):
    """One-shot magnitude pruning |W| (Han et al. 2015), layer-wise or global, any pattern."""


@register_config("random")
@dataclass
class Random(_Criterion):
    """Random pruning with a seeded generator (Liu et al. 2022, "The unreasonable effectiveness of random pruning")."""

    seed: int = 0


@register_config("taylor")
@dataclass
class Taylor(_Criterion):
    """First-order Taylor pruning |W * dL/dW| (Molchanov et al. 2019), gradients averaged over ``batches``."""

    batches: int = 4
    batch_size: int = 128

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.batches, int) or self.batches < 1:
            raise ValueError(f"batches must be a positive integer, got {self.batches!r}")


def prune_(model: nn.Module, config: Config, data: Any = None) -> Report:
    """Prune ``model`` in place with ``config``; ``data`` feeds methods that need it (Taylor, calibration)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, Config):
        raise TypeError(f"config must be a prunekit method config (e.g. prunekit.Magnitude(0.5)), got {config!r}")
    fn = METHODS.get(config.type_name)
    return fn(model, config, data)


def _check_weights(ledger: Ledger, params: dict[str, nn.Parameter], pattern: Pattern) -> None:
    if not params:
        raise ValueError("the model has no prunable weights (Linear, Conv, GPT-2 Conv1D, MultiheadAttention, "
                         f"RNN, MoE experts); kept by rule: {ledger.kept_by_reason()}")
    for name, p in params.items():
        if not torch.isfinite(p.detach()).all():
            raise ValueError(f"weight {name} contains NaN or Inf values; fix the model before pruning")
        check_pattern_fits(ledger.prunable[name].as_matrices(p.detach(), keep_kernel=True).shape[1:], pattern, name)


def _oriented(ledger: Ledger, name: str, t: Tensor) -> Tensor:
    """The pattern view of a weight-shaped tensor: ``(out, in, *k)``, experts stacked as ``(E * out, in)``."""
    return ledger.prunable[name].as_matrices(t, keep_kernel=True).flatten(0, 1)


def _topk(ledger: Ledger, name: str, scores: Tensor, target: float, pattern: Pattern) -> Tensor:
    """Exact top-k of each matrix of ``name`` (each expert on its own), as a mask in the weight's layout."""
    info = ledger.prunable[name]
    per = [topk_mask(s, target, pattern, name=name) for s in scores.unflatten(0, (info.groups, -1))]
    return info.from_matrices(torch.stack(per))


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

    from .training.loop import as_dataset

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


def _allocate(config: _Criterion, scores: dict[str, Tensor], params: dict[str, nn.Parameter]) -> dict[str, float]:
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
        return ALLOCATIONS.get(rule)({k: tuple(p.shape) for k, p in params.items()}, s, config.max_layer_sparsity)
    return alloc.uniform({k: p.numel() for k, p in params.items()}, s, config.max_layer_sparsity)


def prune_scored_(model: nn.Module, config: _Criterion, score_name: str, data: Any = None,
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
    targets = _allocate(config, scores, params)
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
    return Report(config.to_dict(), layers, time.perf_counter() - t0, ms, ledger=ledger)


@METHODS.register("magnitude")
def _magnitude(model: nn.Module, config: Magnitude, data: Any = None) -> Report:
    if data is not None and _is_calibration(model, data):
        from .calibrate import prune_calibrated_magnitude  # type: ignore[attr-defined]

        return prune_calibrated_magnitude(model, config, data)
    return prune_scored_(model, config, "magnitude", data)


@METHODS.register("random")
def _random(model: nn.Module, config: Random, data: Any = None) -> Report:
    return prune_scored_(model, config, "random", data)


@METHODS.register("taylor")
def _taylor(model: nn.Module, config: Taylor, data: Any = None) -> Report:
    return prune_scored_(model, config, "taylor", data)


def _is_calibration(model: nn.Module, data: Any) -> bool:
    """True when ``model`` is a transformers model and ``data`` is calibration text/tokens."""
    return hasattr(model, "config") and hasattr(model.config, "model_type") and not isinstance(data, tuple)


def sparsity_report(model: nn.Module, exclude: list[str] | tuple[str, ...] = ()) -> Report:
    """Per-layer sparsity (exact zeros) of the prunable weights of ``model``, the total, and the labelled ledger.

    Read-only: a tensor no rule covers is reported as kept (``uncovered``) with a warning, not an error.
    """
    ledger = classify(model, exclude=exclude, strict=False)
    params = ledger.parameters(model)
    layers = [LayerReport(k, list(p.shape), p.numel(), layer_sparsity(p.detach())) for k, p in params.items()]
    ledger.measure(model)
    return Report({"type": "report"}, layers, 0.0, attached(model), ledger=ledger)
