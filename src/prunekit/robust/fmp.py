"""Adversarial Feature Map Pruning for Backdoor (FMP; Dong Huang & Qingwen Bu, ICLR 2024, arXiv 2307.11565).

Backdoor feature maps are trained to respond to the trigger, so an input perturbation that moves one of them
changes the model's predictions much more than one that moves an ordinary map. For every feature map ``k`` of
every convolution ``l`` and a small clean set ``{(x, y)}``, FMP's feature reverse generation (as the
authors' released code ``defense/fgsm-feature.py`` does it, ``objective="feature"``) starts from a random sign
perturbation of size ``alpha`` and takes FGSM / PGD steps that move map ``k`` away from its clean value:

    delta_0 = alpha * r,  r in {-1, +1}^d,
    delta_{t+1} = clip_[-eps, eps]( delta_t + (eps / T) * sign( grad_delta || F_{l,k}(x + delta_t) - F_{l,k}(x) ||^2 ) )

(``T = steps``; one step is FGSM), and ranks the map by the clean accuracy of the whole model on ``x + delta``
(lowest first, ties by the higher cross-entropy). ``objective="loss"`` keeps our earlier reading (ascend the
cross-entropy with only map ``k`` seeing the perturbed input). ``eps`` and ``alpha`` are fractions of the clean
inputs' value range, so the released CIFAR-10 settings (inputs in [0, 1], eps 0.06, alpha 0.02, one step) carry
over. Which maps are pruned: the released code prunes the lowest ``floor(C / 64)`` maps of every layer (none of
a layer of fewer than 64 maps, i.e. of every layer of our zoo models), then fine-tunes 10 epochs at lr 0.01
(cosine) on the clean data (its config's ``ratio: 0.1`` is the clean-data fraction, not a pruning fraction).
Here ``rule="fraction"`` prunes ``max(1, round(p * C))`` maps per layer and ``rule="progressive"`` (the default)
prunes in FMP's order while the clean accuracy on a held-out part of the clean set holds (``progressive_maps``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .channels import feature_layers, feature_maps

log = logging.getLogger(__name__)

OBJECTIVES = ("feature", "loss")
RULES = ("progressive", "fraction")


@dataclass
class FMPConfig:
    """FMP's knobs: perturbation budget ``eps`` and step ``alpha`` (fractions of the input range), ``steps``
    (1 = FGSM), ``prune_fraction`` of the feature maps of each layer, ``layers`` (default: every convolution)."""

    eps: float = 0.06
    alpha: float = 0.02
    steps: int = 1
    prune_fraction: float = 0.1
    layers: list[str] | None = None
    objective: str = "feature"
    rule: str = "progressive"
    max_drop: float = 0.1

    def __post_init__(self) -> None:
        for name in ("eps", "alpha"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or not math.isfinite(v):
                raise ValueError(f"FMP {name} must be a positive number (a fraction of the input range), got {v!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"FMP steps must be an integer >= 1 (1 = FGSM), got {self.steps!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"FMP objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.rule not in RULES:
            raise ValueError(f"FMP rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        if isinstance(self.max_drop, bool) or not isinstance(self.max_drop, (int, float)) \
                or not 0.0 <= self.max_drop < 1.0:
            raise ValueError(f"FMP max_drop (clean accuracy the pruning may cost) must be in [0, 1), got "
                             f"{self.max_drop!r}")
        if not 0.0 < float(self.prune_fraction) < 1.0:
            raise ValueError(f"FMP prune_fraction must be in (0, 1), got {self.prune_fraction!r}")


def reverse_perturbation(model: nn.Module, layer: str, channel: int, x: Tensor, y: Tensor, eps: float,
                         alpha: float, steps: int) -> Tensor:
    """``delta`` ``(B, *x.shape[1:])``: FGSM/PGD ascent on the cross-entropy with only map ``channel`` of
    ``layer`` seeing the perturbed input (the other maps of the layer keep their clean values)."""
    module = dict(model.named_modules())[layer]
    with torch.no_grad():
        clean = feature_maps(model, layer, x)  # (B, C, *spatial)

    def one_map(m: nn.Module, inputs: Any, out: Tensor) -> Tensor:
        mixed = clean.clone()
        mixed[:, channel] = out[:, channel]
        return mixed

    delta = torch.zeros_like(x)
    handle = module.register_forward_hook(one_map)
    try:
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = nn.functional.cross_entropy(model(x + delta), y)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
    finally:
        handle.remove()
    return delta.detach()


def feature_perturbation(model: nn.Module, layer: str, channel: int, x: Tensor, eps: float, alpha: float,
                         steps: int, start: Tensor, bounds: tuple[float, float]) -> Tensor:
    """``delta`` ``(B, *x.shape[1:])`` moving map ``channel`` of ``layer`` away from its clean value: from the
    random start ``alpha * start`` (``start`` in {-1, +1}), ``steps`` signed-gradient steps of ``eps / steps``
    ascending ``MSE(F_k(x + delta), F_k(x))`` within ``[-eps, eps]``, ``x + delta`` kept in ``bounds``."""
    with torch.no_grad():
        clean = feature_maps(model, layer, x)[:, channel]  # (B, *spatial)
    lo, hi = bounds
    delta = (alpha * start).clamp(-eps, eps)
    delta = (x + delta).clamp(lo, hi) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        moved = feature_maps(model, layer, x + delta)[:, channel]
        (grad,) = torch.autograd.grad(nn.functional.mse_loss(moved, clean), delta)
        delta = (delta.detach() + (eps / steps) * grad.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(lo, hi) - x
    return delta.detach()


def layer_sensitivity(model: nn.Module, layer: str, x: Tensor, y: Tensor, eps: float, alpha: float,
                      steps: int, objective: str = "loss", seed: int = 0) -> tuple[Tensor, Tensor]:
    """Per feature map of ``layer``: ``(accuracy (C,), mean cross-entropy (C,))`` on the perturbed clean set."""
    channels = dict(model.named_modules())[layer].out_channels
    acc, loss = torch.zeros(channels), torch.zeros(channels)
    gen = torch.Generator().manual_seed(seed)
    start = torch.randint(0, 2, x.shape, generator=gen).to(x) * 2 - 1  # (B, *example): one random sign per value
    bounds = (float(x.min()), float(x.max()))
    for k in range(channels):
        if objective == "feature":
            delta = feature_perturbation(model, layer, k, x, eps, alpha, steps, start, bounds)
        else:
            delta = reverse_perturbation(model, layer, k, x, y, eps, alpha, steps)
        with torch.no_grad():
            out = model(x + delta)  # (B, classes)
            acc[k] = (out.argmax(-1) == y).float().mean()
            loss[k] = nn.functional.cross_entropy(out, y)
    return acc, loss


def fmp_scores(model: nn.Module, x: Tensor, y: Tensor, config: FMPConfig | None = None) -> dict[str, dict[str, Any]]:
    """FMP's sensitivity of every feature map: ``{layer: {"accuracy", "loss", "order"}}`` where ``order`` lists
    the maps most sensitive first (lowest accuracy under their perturbation, then highest loss)."""
    cfg = config or FMPConfig()
    span = float(x.max() - x.min()) or 1.0
    eps, alpha = cfg.eps * span, cfg.alpha * span
    was = model.training
    model.eval()
    out: dict[str, dict[str, Any]] = {}
    try:
        for layer in cfg.layers or feature_layers(model):
            acc, loss = layer_sensitivity(model, layer, x, y, eps, alpha, cfg.steps, cfg.objective)
            order = sorted(range(len(acc)), key=lambda k: (float(acc[k]), -float(loss[k])))
            out[layer] = {"accuracy": acc.tolist(), "loss": loss.tolist(), "order": order}
    finally:
        model.train(was)
    return out


def maps_to_prune(scores: dict[str, dict[str, Any]], fraction: float) -> dict[str, list[int]]:
    """The ``max(1, round(fraction * C))`` most sensitive maps of each layer (never all of them)."""
    drop = {}
    for layer, s in scores.items():
        c = len(s["order"])
        k = min(c - 1, max(1, round(fraction * c)))
        drop[layer] = sorted(s["order"][:k])
    return drop


def progressive_maps(model: nn.Module, scores: dict[str, dict[str, Any]], held: tuple[Tensor, Tensor],
                     max_drop: float, fraction: float) -> tuple[dict[str, list[int]], dict[str, Any]]:
    """Progressive pruning in FMP's order while the clean accuracy holds (clean data only).

    Layers from the last convolution to the first; within a layer its maps most sensitive first, at most
    ``max(1, floor(fraction * C))`` of them (never all): a map is pruned when the accuracy on the held-out clean
    set ``held`` with it and every map chosen so far zeroed stays at or above the unpruned accuracy minus
    ``max_drop``; the first map that would break that ends the layer's walk. Returns the maps and a trace."""
    from .channels import accuracy_without

    base = accuracy_without(model, {}, *held)
    chosen: dict[str, list[int]] = {layer: [] for layer in scores}
    trace: dict[str, Any] = {"base": base, "limit": base - max_drop, "stopped": {}}
    for layer in reversed(list(scores)):
        order = scores[layer]["order"]
        cap = min(len(order) - 1, max(1, math.floor(fraction * len(order))))
        trace["stopped"][layer] = "cap"
        for k in order[:cap]:
            trial = {**chosen, layer: [*chosen[layer], k]}
            if accuracy_without(model, trial, *held) < base - max_drop:
                trace["stopped"][layer] = f"clean accuracy (map {k})"
                break
            chosen[layer].append(k)
    trace["accuracy_after"] = accuracy_without(model, chosen, *held)
    log.info("FMP progressive pruning: %s (held-out clean accuracy %.4f -> %.4f)", chosen, base,
             trace["accuracy_after"])
    return {k: sorted(v) for k, v in chosen.items()}, trace
