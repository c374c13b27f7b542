"""Pruning at initialization: SNIP, GraSP, SynFlow, magnitude and random masks, before any training.

Each ``*_masks`` helper returns ``{"<module>.weight": BoolTensor}`` (True = keep) without changing
the model; ``attach(model, masks)`` applies them, or the ``PruneAtInit`` callback does both when
``fit`` starts. Scores are the registered criteria ``snip``, ``grasp``, ``synflow`` of
``prunekit.scores``; this module computes the statistics they need. Under torch.distributed the
statistics are averaged over ranks, so every rank selects the same masks.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .. import allocation as alloc
from ..errors import check_choice, check_sparsity
from ..layers import Ledger, WeightInfo, classify
from ..masks import DEFAULT_EXCLUDE, Report, attach, attached, prunable_parameters
from ..oneshot import Criterion, expert_counts, mean_gradients, prune_scored_, unit_view, weight_mask
from ..patterns import NM, Pattern, Unstructured, check_pattern_fits, parse_pattern, pattern_sparsity, topk_mask
from ..registry import METHODS, SCORES
from .distributed import all_reduce_mean_, check_masks_synced, unwrap
from .loop import Callback, TrainState, as_dataset

log = logging.getLogger(__name__)

PAI_METHODS = ("snip", "grasp", "synflow", "magnitude", "random")
SCOPES = ("global", "layer")
LAYER_RULES = ("uniform", "er", "erk")
LossFn = Callable[[Tensor, Tensor], Tensor]


def _check_common(sparsity: float, scope: str, allocation: str | None, max_layer_sparsity: float) -> None:
    check_sparsity(sparsity)
    check_choice(scope, "scope", SCOPES)
    if allocation is not None:
        check_choice(allocation, "allocation", LAYER_RULES)
        if scope == "global":
            raise ValueError(f"allocation={allocation!r} needs scope='layer' (scope='global' ranks all layers at once)")
    if not 0.0 < float(max_layer_sparsity) <= 1.0:
        raise ValueError(f"max_layer_sparsity must be in (0, 1], got {max_layer_sparsity!r}")


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def layer_targets(shapes: Mapping[str, tuple[int, ...]], sparsity: float, allocation: str = "uniform",
                  max_layer_sparsity: float = 0.99, groups: Mapping[str, int] | None = None) -> dict[str, float]:
    """Per-layer sparsities of a shape-only allocation rule (``uniform``, ``er``, ``erk``).

    ``groups``: ``{layer: E}`` of fused expert tensors, which ER / ERK count as E matrices ``(out, in)``."""
    check_choice(allocation, "allocation", LAYER_RULES)
    if allocation == "uniform":
        return alloc.uniform({k: math.prod(s) for k, s in shapes.items()}, sparsity, max_layer_sparsity)
    return alloc.ALLOCATIONS.get(allocation)(dict(shapes), sparsity, max_layer_sparsity, groups=groups)


def plain_ledger(scores: Mapping[str, Tensor]) -> Ledger:
    """A ledger that sees each tensor as stored: one matrix ``(out, in[, *k])`` each (no transposition, no experts)."""
    return Ledger({k: WeightInfo(k, "", k, "linear" if s.dim() <= 2 else "conv", tuple(s.shape))
                   for k, s in scores.items()})


def select_masks(scores: Mapping[str, Tensor], sparsity: float | None, *, scope: str = "global",
                 allocation: str | None = None, max_layer_sparsity: float = 0.99, warn: bool = True,
                 ledger: Ledger | None = None, pattern: Pattern | str = Unstructured()) -> dict[str, Tensor]:
    """Exact keep-masks from per-layer scores: one ranking over all layers, or per-layer targets.

    With the model's ``ledger`` (``layers.classify``) each weight is seen in its orientation: ``pattern``
    (N:M, Block) runs along the input dimension and each expert of a fused tensor keeps its own share;
    without one each tensor is one plain matrix as stored. ``warn=False`` keeps a binding
    ``max_layer_sparsity`` out of the log (intermediate rounds)."""
    pattern = parse_pattern(pattern)
    sparsity = pattern_sparsity(pattern, sparsity)
    _check_common(sparsity, scope, allocation, max_layer_sparsity)
    ledger = ledger if ledger is not None else plain_ledger(scores)
    unknown = [k for k in scores if k not in ledger.prunable]
    if unknown:
        raise ValueError(f"scores name tensors the ledger does not hold: {unknown}; ledger: {sorted(ledger.prunable)}")
    scores = {k: s.detach().float() for k, s in scores.items()}
    for k, s in scores.items():
        check_pattern_fits(ledger.prunable[k].as_matrices(s, keep_kernel=True).shape[1:], pattern, k)
    if isinstance(pattern, NM):
        targets: Mapping[str, float] = {k: pattern.sparsity for k in scores}
    elif scope == "global":
        units = {k: unit_view(ledger, k, s, pattern) for k, s in scores.items()}
        sizes = {k: s.numel() // units[k].numel() for k, s in scores.items()}
        targets = alloc.global_(units, sparsity, max_layer_sparsity, unit_sizes=sizes, warn=warn)
    else:
        targets = layer_targets({k: tuple(s.shape) for k, s in scores.items()}, sparsity, allocation or "uniform",
                                max_layer_sparsity, expert_counts(ledger))
    return {k: weight_mask(ledger, k, s, targets[k], pattern, allow_collapse=True) for k, s in scores.items()}


def layer_mask(scores: Tensor, sparsity: float, name: str = "weight") -> Tensor:
    """``topk_mask`` that also accepts sparsity 1.0 (a layer pruned away, possible with max_layer_sparsity=1)."""
    if sparsity >= 1.0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    return topk_mask(scores.detach().float(), sparsity, name=name)


def _ledger(model: nn.Module, exclude: Sequence[str]) -> Ledger:
    ledger = classify(unwrap(model), exclude=exclude)
    if not ledger.prunable:
        raise ValueError("the model has no prunable layers (Linear, Conv, GPT-2 Conv1D, MultiheadAttention, RNN, "
                         f"MoE experts); kept by rule: {ledger.kept_by_reason()}")
    return ledger


def _weights(model: nn.Module, exclude: Sequence[str]) -> dict[str, nn.Parameter]:
    return _ledger(model, exclude).parameters(unwrap(model))


def _batches(data: Any, batches: int, batch_size: int) -> list[tuple[Tensor, Tensor]]:
    if data is None:
        raise ValueError("this criterion needs data=(X, y) or a Dataset; got data=None")
    ds = as_dataset(data)
    if len(ds) == 0:
        raise ValueError("data is empty: gradient-based scores need at least one batch")
    out = []
    for x, y in DataLoader(ds, batch_size=batch_size, shuffle=False):
        if len(out) >= batches:
            break
        out.append((x, y))
    return out


def snip_scores(model: nn.Module, data: Any, *, batches: int = 1, batch_size: int = 128,
                loss_fn: LossFn | None = None, exclude: Sequence[str] = DEFAULT_EXCLUDE) -> dict[str, Tensor]:
    """SNIP connection sensitivity |W * dL/dW| at the current weights (Lee et al. 2019, "SNIP")."""
    _check_positive_int(batches, "batches")
    params = _weights(model, exclude)
    grads = mean_gradients(unwrap(model), data, params, batches, batch_size, loss_fn)
    all_reduce_mean_(list(grads.values()))
    score = SCORES.get("snip")
    return {k: score(p.detach(), {"grad": grads[k]}) for k, p in params.items()}


def grasp_scores(model: nn.Module, data: Any, *, temperature: float = 200.0, batches: int = 1,
                 batch_size: int = 128, exclude: Sequence[str] = DEFAULT_EXCLUDE) -> dict[str, Tensor]:
    """W * Hg with g = dL/dW and H its Hessian, logits divided by ``temperature`` (Wang et al. 2020, GraSP)."""
    params = _weights(model, exclude)
    hg = grasp_hessian_gradient(model, data, temperature=temperature, batches=batches, batch_size=batch_size,
                                exclude=exclude)
    score = SCORES.get("grasp")
    return {k: score(p.detach(), {"hg": hg[k]}) for k, p in params.items()}


def grasp_hessian_gradient(model: nn.Module, data: Any, *, temperature: float = 200.0, batches: int = 1,
                           batch_size: int = 128, exclude: Sequence[str] = DEFAULT_EXCLUDE) -> dict[str, Tensor]:
    """Hg: the Hessian-gradient product of the tempered loss, averaged over batches and ranks."""
    _check_positive_int(batches, "batches")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    net, params = unwrap(model), _weights(model, exclude)
    names, ws = list(params), list(params.values())
    data_batches = _batches(data, batches, batch_size)
    dev = ws[0].device
    was = net.training
    net.eval()
    try:
        g = _grasp_gradient(net, ws, data_batches, temperature, dev)
        all_reduce_mean_(g)
        hg = _grasp_hessian_gradient(net, ws, g, data_batches, temperature, dev)
        all_reduce_mean_(hg)
    finally:
        net.train(was)
    return dict(zip(names, hg))


def _grasp_gradient(net: nn.Module, ws: list[Tensor], data: list, temperature: float,
                    dev: torch.device) -> list[Tensor]:
    g = [torch.zeros_like(w) for w in ws]
    for x, y in data:
        loss = nn.functional.cross_entropy(net(x.to(dev)) / temperature, y.to(dev))
        for acc, gi in zip(g, torch.autograd.grad(loss, ws, allow_unused=True)):
            if gi is not None:
                acc += gi.detach() / len(data)
    return g


def _grasp_hessian_gradient(net: nn.Module, ws: list[Tensor], g: list[Tensor], data: list, temperature: float,
                            dev: torch.device) -> list[Tensor]:
    hg = [torch.zeros_like(w) for w in ws]
    for x, y in data:
        loss = nn.functional.cross_entropy(net(x.to(dev)) / temperature, y.to(dev))
        grads = torch.autograd.grad(loss, ws, create_graph=True, allow_unused=True)
        z = sum((gi * gs).sum() for gi, gs in zip(grads, g) if gi is not None)  # g_stop^T dL/dW
        if not torch.is_tensor(z) or not z.requires_grad:
            continue
        for acc, h in zip(hg, torch.autograd.grad(z, ws, allow_unused=True)):
            if h is not None:
                acc += h.detach() / len(data)
    return hg


def synflow_gradients(model: nn.Module, input_shape: Sequence[int], masks: Mapping[str, Tensor] | None = None,
                      exclude: Sequence[str] = DEFAULT_EXCLUDE) -> dict[str, Tensor]:
    """dR/dW at |W| (masked), R = sum of the outputs of the network with |W| on an all-ones input, in float64."""
    net, params = unwrap(model), _weights(model, exclude)
    dev = next(iter(params.values())).device
    x = torch.ones((1, *input_shape), dtype=torch.float64, device=dev)  # (1, *input_shape)
    fixed = {n: t.detach().double().abs() for n, t in [*net.named_parameters(), *net.named_buffers()]
             if t.is_floating_point()}
    leaves = {k: (fixed[k] * (masks.get(k, 1.0) if masks is not None else 1.0)).requires_grad_() for k in params}
    was = net.training
    net.eval()
    try:
        r = torch.func.functional_call(net, {**fixed, **leaves}, (x,)).sum()  # R = 1^T (prod |W|) 1
        grads = torch.autograd.grad(r, list(leaves.values()), allow_unused=True)
    finally:
        net.train(was)
    return {k: torch.zeros_like(w) if dr is None else dr for (k, w), dr in zip(leaves.items(), grads)}


def synflow_scores(model: nn.Module, input_shape: Sequence[int], masks: Mapping[str, Tensor] | None = None,
                   exclude: Sequence[str] = DEFAULT_EXCLUDE) -> dict[str, Tensor]:
    """|W * dR/dW|, R = sum of the outputs of the network with |W| on an all-ones input (Tanaka et al. 2020)."""
    params = _weights(model, exclude)
    grads = synflow_gradients(model, input_shape, masks, exclude)
    score = SCORES.get("synflow")
    out = {}
    for k, p in params.items():
        w = p.detach().double().abs() * (masks.get(k, 1.0) if masks is not None else 1.0)
        out[k] = score(w, {"synflow_grad": grads[k]}).to(p.dtype)
    return out


def synflow_sparsities(sparsity: float, iterations: int) -> list[float]:
    """SynFlow's exponential schedule: sparsity 1 - (1 - s)^(k/n) after round k = 1..n (Tanaka et al. 2020)."""
    return [1.0 - (1.0 - float(sparsity)) ** (k / iterations) for k in range(1, iterations + 1)]


def snip_masks(model: nn.Module, data: Any, sparsity: float, *, batches: int = 1, batch_size: int = 128,
               scope: str = "global", allocation: str | None = None, max_layer_sparsity: float = 0.99,
               exclude: Sequence[str] = DEFAULT_EXCLUDE, pattern: Pattern | str = Unstructured()) -> dict[str, Tensor]:
    """SNIP masks: keep the highest connection sensitivities, one global ranking by default (Lee et al. 2019)."""
    _check_common(sparsity, scope, allocation, max_layer_sparsity)
    scores = snip_scores(model, data, batches=batches, batch_size=batch_size, exclude=exclude)
    return _finish(select_masks(scores, sparsity, scope=scope, allocation=allocation,
                                max_layer_sparsity=max_layer_sparsity, ledger=_ledger(model, exclude),
                                pattern=pattern), "snip")


def grasp_masks(model: nn.Module, data: Any, sparsity: float, *, temperature: float = 200.0, batches: int = 1,
                batch_size: int = 128, scope: str = "global", allocation: str | None = None,
                max_layer_sparsity: float = 0.99, exclude: Sequence[str] = DEFAULT_EXCLUDE,
                pattern: Pattern | str = Unstructured()) -> dict[str, Tensor]:
    """GraSP masks: keep the highest W * Hg, i.e. remove the highest S(-W) = -W * Hg (Wang et al. 2020, "GraSP").

    The removed weights are those whose removal reduces the gradient flow least (or increases it).
    """
    _check_common(sparsity, scope, allocation, max_layer_sparsity)
    scores = grasp_scores(model, data, temperature=temperature, batches=batches, batch_size=batch_size,
                          exclude=exclude)
    return _finish(select_masks(scores, sparsity, scope=scope, allocation=allocation,
                                max_layer_sparsity=max_layer_sparsity, ledger=_ledger(model, exclude),
                                pattern=pattern), "grasp")


def synflow_masks(model: nn.Module, sparsity: float, input_shape: Sequence[int], *, iterations: int = 100,
                  max_layer_sparsity: float = 0.99, exclude: Sequence[str] = DEFAULT_EXCLUDE) -> dict[str, Tensor]:
    """Iterative SynFlow, data-free: ``iterations`` rounds, density (1 - s)^(k/n) after round k (Tanaka et al.
    2020, Algorithm 1, exponential schedule); pruned weights never come back."""
    _check_common(sparsity, "global", None, max_layer_sparsity)
    _check_positive_int(iterations, "iterations")
    shape = tuple(input_shape)
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(f"input_shape must be the shape of one example, positive integers, got {input_shape!r}")
    ledger = _ledger(model, exclude)
    masks = {k: torch.ones_like(p, dtype=torch.bool) for k, p in ledger.parameters(unwrap(model)).items()}
    rounds = synflow_sparsities(sparsity, iterations)
    for i, s_k in enumerate(rounds):
        scores = synflow_scores(model, shape, masks, exclude)
        scores = {n: s.float().masked_fill(~masks[n], -math.inf) for n, s in scores.items()}
        last = i == len(rounds) - 1  # a binding cap is logged once, at the last round
        masks = select_masks(scores, s_k, scope="global", max_layer_sparsity=max_layer_sparsity, warn=last,
                             ledger=ledger)
    return _finish(masks, "synflow")


def magnitude_masks(model: nn.Module, sparsity: float, *, scope: str = "global", allocation: str | None = None,
                    max_layer_sparsity: float = 0.99, exclude: Sequence[str] = DEFAULT_EXCLUDE,
                    pattern: Pattern | str = Unstructured()) -> dict[str, Tensor]:
    """Magnitude masks |W| at the current (e.g. initial) weights (Han et al. 2015)."""
    _check_common(sparsity, scope, allocation, max_layer_sparsity)
    ledger = _ledger(model, exclude)
    scores = {k: p.detach().abs() for k, p in ledger.parameters(unwrap(model)).items()}
    return _finish(select_masks(scores, sparsity, scope=scope, allocation=allocation,
                                max_layer_sparsity=max_layer_sparsity, ledger=ledger, pattern=pattern), "magnitude")


def random_masks(model: nn.Module, sparsity: float, *, allocation: str = "erk", seed: int = 0,
                 max_layer_sparsity: float = 0.99, exclude: Sequence[str] = DEFAULT_EXCLUDE,
                 pattern: Pattern | str = Unstructured()) -> dict[str, Tensor]:
    """Random masks with per-layer sparsities from ``uniform``, ``er`` (Mocanu et al. 2018) or ``erk``
    (Evci et al. 2020); exact counts per layer (per expert matrix of a fused MoE tensor), the same on every
    rank for one ``seed``; ``pattern`` (N:M, Block) runs along each weight's input dimension."""
    _check_common(sparsity, "layer", allocation, max_layer_sparsity)
    ledger = _ledger(model, exclude)
    gen = torch.Generator().manual_seed(int(seed))
    scores = {k: torch.rand(p.shape, generator=gen) for k, p in ledger.parameters(unwrap(model)).items()}
    masks = select_masks(scores, sparsity, scope="layer", allocation=allocation,
                         max_layer_sparsity=max_layer_sparsity, ledger=ledger, pattern=pattern)
    params = ledger.parameters(unwrap(model))
    return _finish({k: m.to(params[k].device) for k, m in masks.items()}, "random")


def _finish(masks: dict[str, Tensor], method: str) -> dict[str, Tensor]:
    check_masks_synced(masks, f"after {method} at initialization")
    dead = [k for k, m in masks.items() if not m.any()]
    if dead:
        log.warning("%s pruned whole layers away (layer collapse): %s", method, dead)
    return masks


def prune_at_init_masks(model: nn.Module, method: str, sparsity: float, data: Any = None,
                        **kwargs: Any) -> dict[str, Tensor]:
    """Masks of the pruning-at-initialization ``method`` (one of ``PAI_METHODS``); ``kwargs`` go to its helper."""
    check_choice(method, "method", PAI_METHODS)
    if method == "snip":
        return snip_masks(model, data, sparsity, **kwargs)
    if method == "grasp":
        return grasp_masks(model, data, sparsity, **kwargs)
    if method == "synflow":
        if "input_shape" not in kwargs:
            if data is None:
                raise ValueError("synflow needs input_shape=(...) (the shape of one example) or data to read it from")
            kwargs["input_shape"] = tuple(as_dataset(data)[0][0].shape)
        return synflow_masks(model, sparsity, **kwargs)
    if method == "magnitude":
        return magnitude_masks(model, sparsity, **kwargs)
    return random_masks(model, sparsity, **kwargs)


@dataclass
class PruneAtInit(Callback):
    """Compute ``method``'s masks when ``fit`` starts (step 0) and attach them; they stay fixed after."""

    method: str
    sparsity: float
    data: Any = None
    options: dict[str, Any] = field(default_factory=dict)
    masks: dict[str, Tensor] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_choice(self.method, "method", PAI_METHODS)
        check_sparsity(self.sparsity)
        if self.method in ("snip", "grasp") and self.data is None:
            raise ValueError(f"PruneAtInit({self.method!r}) needs data=(X, y) to compute its scores")

    def on_fit_start(self, state: TrainState) -> None:
        net = unwrap(state.model)
        if state.step == 0 or attached(net) is None:
            self.masks = prune_at_init_masks(state.model, self.method, self.sparsity, self.data, **self.options)
            attach(net, self.masks)
        ms = attached(net)
        assert ms is not None
        ms.watch(state.optimizer)
        check_masks_synced(ms.masks, "at the start of training")


# ------------------------------------------------------------------------------------------------
# prune_() configs, so ``prune_(model, SNIP(0.9), data)`` works like the one-shot criteria.


@dataclass
class _BatchedCriterion(Criterion):
    """A criterion scored on ``batches`` batches of ``batch_size`` examples of the data, global by default."""

    scope: str = "global"
    batches: int = 1
    batch_size: int = 128

    def validate(self) -> None:
        super().validate()
        _check_positive_int(self.batches, "batches")


@dataclass
class SNIP(_BatchedCriterion):
    """SNIP at initialization (Lee et al. 2019): |W * dL/dW| from ``batches`` batches, global by default."""


@dataclass
class GraSP(_BatchedCriterion):
    """GraSP at initialization (Wang et al. 2020): keep the highest W * Hg, global by default."""

    temperature: float = 200.0


@dataclass
class SynFlow(Criterion):
    """Iterative SynFlow (Tanaka et al. 2020): data-free; ``input_shape`` is one example's shape."""

    scope: str = "global"
    iterations: int = 100
    input_shape: list[int] | None = None

    def validate(self) -> None:
        super().validate()
        _check_positive_int(self.iterations, "iterations")


@METHODS.register("snip", kind="oneshot", config=SNIP)
def _snip(model: nn.Module, config: SNIP, data: Any = None) -> Report:
    params = prunable_parameters(unwrap(model), exclude=config.exclude, include=config.include)
    grads = mean_gradients(unwrap(model), data, params, config.batches, config.batch_size)
    all_reduce_mean_(list(grads.values()))
    return prune_scored_(unwrap(model), config, "snip", data, {k: {"grad": g} for k, g in grads.items()})


@METHODS.register("grasp", kind="oneshot", config=GraSP)
def _grasp(model: nn.Module, config: GraSP, data: Any = None) -> Report:
    hg = grasp_hessian_gradient(model, data, temperature=config.temperature, batches=config.batches,
                                batch_size=config.batch_size, exclude=config.exclude)
    return prune_scored_(unwrap(model), config, "grasp", data, {k: {"hg": h} for k, h in hg.items()})


@METHODS.register("synflow", kind="oneshot", config=SynFlow)
def _synflow(model: nn.Module, config: SynFlow, data: Any = None) -> Report:
    """Iterative SynFlow through the shared selection path, so ``pattern``, ``scope`` and ``allocation`` apply
    at every round (what is pruned stays pruned). N:M has one fixed sparsity: one round scores it."""
    if config.input_shape is None and data is None:
        raise ValueError("SynFlow needs input_shape=[...] (one example's shape) or data to read it from")
    t0 = time.perf_counter()
    shape = tuple(config.input_shape) if config.input_shape else tuple(as_dataset(data)[0][0].shape)
    net = unwrap(model)
    rounds = [float(config.sparsity)] if isinstance(config.pattern, NM) else \
        synflow_sparsities(float(config.sparsity), config.iterations)
    report = None
    for s_k in rounds:
        ms = attached(net)
        grads = synflow_gradients(net, shape, ms.masks if ms is not None else None, config.exclude)
        report = prune_scored_(net, dataclasses.replace(config, sparsity=s_k), "synflow",
                               stats={k: {"synflow_grad": g} for k, g in grads.items()})
    assert report is not None
    _finish(report.masks.masks, "synflow")  # type: ignore[union-attr]
    report.method = config.to_dict()
    report.seconds = time.perf_counter() - t0
    return report
