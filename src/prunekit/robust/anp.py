"""Adversarial Neuron Pruning (ANP; Wu & Wang, NeurIPS 2021, "Adversarial Neuron Pruning Purifies Backdoored
Deep Models", Eq. 4-5 and Algorithm 1).

Every feature map ``k`` of every convolution gets a mask ``m_k`` in [0, 1] (start 1) and an adversarial
multiplicative perturbation ``delta_k`` in [-eps, eps]; the map's output becomes ``(m_k + delta_k) * F_k(x)``.
On the clean set the masks solve

    min_m  alpha * L(m; x, y) + (1 - alpha) * max_{|delta| <= eps} L(m + delta; x, y)

(the inner maximum by ``steps`` signed-gradient steps of ``step_size`` from a random start; the outer by
SGD with momentum 0.9 on ``m``, clipped to [0, 1]), with the weights frozen. Backdoor maps are the ones
whose perturbation hurts the clean loss most, so their masks fall; maps with ``m_k < threshold`` are pruned.
Defaults are the paper's: eps 0.4, step 0.2, one step, alpha 0.2, mask lr 0.2, 2000 iterations of batch 128,
threshold 0.2 (the paper's perturbation sits on BatchNorm scales; here it scales each map's output).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .channels import feature_layers

log = logging.getLogger(__name__)


@dataclass
class ANPConfig:
    """ANP's knobs (the paper's defaults): ``eps``, ``step_size``, ``steps`` of the inner maximisation, trade-off
    ``alpha``, mask ``lr``, ``iterations`` of batch ``batch_size``, pruning ``threshold`` on the masks."""

    eps: float = 0.4
    step_size: float = 0.2
    steps: int = 1
    alpha: float = 0.2
    lr: float = 0.2
    iterations: int = 2000
    batch_size: int = 128
    threshold: float = 0.2

    def __post_init__(self) -> None:
        for name in ("eps", "step_size", "lr"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"ANP {name} must be a positive number, got {v!r}")
        for name in ("steps", "iterations", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ANP {name} must be an integer >= 1, got {v!r}")
        if not 0.0 <= self.alpha <= 1.0 or not 0.0 < self.threshold < 1.0:
            raise ValueError(f"ANP alpha must be in [0, 1] and threshold in (0, 1), got {self.alpha!r}, "
                             f"{self.threshold!r}")


class _Scaled:
    """Forward hooks multiplying each convolution's output maps by ``mask + delta`` (shape ``(C,)`` per layer)."""

    def __init__(self, model: nn.Module, layers: list[str]) -> None:
        mods = dict(model.named_modules())
        self.masks = {n: torch.ones(mods[n].out_channels, requires_grad=True) for n in layers}
        self.delta = {n: torch.zeros(mods[n].out_channels) for n in layers}
        self.handles = [mods[n].register_forward_hook(self._hook(n)) for n in layers]

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, out: Tensor) -> Tensor:
            scale = self.masks[name] + self.delta[name]  # (C,)
            return out * scale.view(1, -1, *([1] * (out.dim() - 2)))

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _inner_max(model: nn.Module, hooks: _Scaled, x: Tensor, y: Tensor, cfg: ANPConfig, gen: torch.Generator) -> None:
    """Set ``hooks.delta`` to the signed-gradient ascent on the loss within ``[-eps, eps]`` (random start)."""
    for n, m in hooks.masks.items():
        hooks.delta[n] = (torch.rand(m.shape, generator=gen) * 2 - 1) * cfg.eps
    for _ in range(cfg.steps):
        for d in hooks.delta.values():
            d.requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, list(hooks.delta.values()))
        for (n, d), g in zip(list(hooks.delta.items()), grads):
            hooks.delta[n] = (d.detach() + cfg.step_size * g.sign()).clamp(-cfg.eps, cfg.eps)


def anp_masks(model: nn.Module, x: Tensor, y: Tensor, config: ANPConfig | None = None,
              seed: int = 0) -> dict[str, Tensor]:
    """ANP's optimised masks ``{layer: (C,)}`` on the clean set ``(x, y)``; ``model`` is left unchanged."""
    cfg = config or ANPConfig()
    gen = torch.Generator().manual_seed(seed)
    was = model.training
    model.eval()
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    hooks = _Scaled(model, feature_layers(model))
    opt = torch.optim.SGD(list(hooks.masks.values()), lr=cfg.lr, momentum=0.9)
    try:
        for _ in range(cfg.iterations):
            idx = torch.randint(len(y), (min(cfg.batch_size, len(y)),), generator=gen)
            xb, yb = x[idx], y[idx]
            _inner_max(model, hooks, xb, yb, cfg, gen)
            rob = nn.functional.cross_entropy(model(xb), yb)  # masks + delta
            saved = hooks.delta
            hooks.delta = {n: torch.zeros_like(d) for n, d in saved.items()}
            nat = nn.functional.cross_entropy(model(xb), yb)  # masks alone
            opt.zero_grad()
            (cfg.alpha * nat + (1 - cfg.alpha) * rob).backward()
            opt.step()
            with torch.no_grad():
                for m in hooks.masks.values():
                    m.clamp_(0.0, 1.0)
    finally:
        hooks.remove()
        for p in frozen:
            p.requires_grad_(True)
        model.train(was)
    return {n: m.detach().clone() for n, m in hooks.masks.items()}


def anp_prune_set(masks: dict[str, Tensor], threshold: float) -> dict[str, list[int]]:
    """The maps whose ANP mask is below ``threshold`` (never every map of a layer: the highest one stays)."""
    drop = {}
    for layer, m in masks.items():
        low = [int(k) for k in torch.nonzero(m < threshold).flatten()]
        if len(low) == len(m):
            low.remove(int(torch.argmax(m)))
            log.warning("ANP: every mask of %s is below %s; the highest map is kept", layer, threshold)
        drop[layer] = low
    return drop
