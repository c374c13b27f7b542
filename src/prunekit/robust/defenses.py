"""Backdoor defenses on a small clean set: none, fine-tuning, fine-pruning (Liu et al. 2018), FMP.

Each defense is ``fn(model, clean, config, seed) -> report`` filed in ``DEFENSES``; it changes ``model``
in place. Feature maps are pruned by masks or removed for real (``config.prune_by``), then the model is
fine-tuned on the clean set (pruned maps stay pruned).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import Registry
from .anp import ANPConfig, anp_masks, anp_prune_set
from .channels import PRUNE_BY, feature_layers, feature_maps, prune_channels_
from .fmp import FMPConfig, fmp_scores, maps_to_prune
from .metrics import predict

log = logging.getLogger(__name__)

DEFENSES = Registry("defense")
Clean = tuple[Tensor, Tensor]


@dataclass
class DefenseConfig:
    """Shared settings: clean fine-tuning (``finetune_epochs`` at ``lr``, SGD, cosine), ``prune_by`` mask|remove,
    FMP's and ANP's knobs, and fine-pruning's stop rule (clean accuracy may fall by ``fp_max_drop``, at most
    ``fp_max_fraction`` of the last layer's maps pruned)."""

    finetune_epochs: int = 10
    lr: float = 0.01
    batch_size: int = 32
    weight_decay: float = 5e-4
    prune_by: str = "mask"
    fmp: FMPConfig = field(default_factory=FMPConfig)
    anp: ANPConfig = field(default_factory=ANPConfig)
    fp_max_drop: float = 0.04
    fp_max_fraction: float = 0.9

    def __post_init__(self) -> None:
        if isinstance(self.finetune_epochs, bool) or not isinstance(self.finetune_epochs, int) \
                or self.finetune_epochs < 0:
            raise ValueError(f"finetune_epochs must be an integer >= 0, got {self.finetune_epochs!r}")
        if not self.lr > 0:
            raise ValueError(f"the fine-tuning lr must be > 0, got {self.lr!r}")
        if self.prune_by not in PRUNE_BY:
            raise ValueError(f"--prune-by must be one of {', '.join(PRUNE_BY)}, got {self.prune_by!r}")
        if not 0.0 <= self.fp_max_drop < 1.0 or not 0.0 < self.fp_max_fraction < 1.0:
            raise ValueError(f"fp_max_drop must be in [0, 1) and fp_max_fraction in (0, 1), got "
                             f"{self.fp_max_drop!r}, {self.fp_max_fraction!r}")


def clean_finetune(model: nn.Module, clean: Clean, cfg: DefenseConfig, seed: int) -> float:
    """Fine-tune on the clean set (attached masks keep pruned maps at zero); returns the seconds it took."""
    from ..training.loop import fit

    if not cfg.finetune_epochs:
        return 0.0
    t = time.perf_counter()
    fit(model, clean, epochs=cfg.finetune_epochs, lr=cfg.lr, batch_size=cfg.batch_size,
        weight_decay=cfg.weight_decay, optimizer="sgd", seed=seed)
    return time.perf_counter() - t


@DEFENSES.register("none")
def no_defense(model: nn.Module, clean: Clean, cfg: DefenseConfig, seed: int = 0) -> dict[str, Any]:
    """No defense: the backdoored model as it is (the reference row)."""
    return {"pruned": {}, "finetune_s": 0.0}


@DEFENSES.register("finetune")
def finetune_defense(model: nn.Module, clean: Clean, cfg: DefenseConfig, seed: int = 0) -> dict[str, Any]:
    """Fine-tuning only: the clean set, ``finetune_epochs`` epochs, nothing pruned (FMP's fine-tuning baseline)."""
    return {"pruned": {}, "finetune_s": clean_finetune(model, clean, cfg, seed)}


@DEFENSES.register("fmp")
def fmp_defense(model: nn.Module, clean: Clean, cfg: DefenseConfig, seed: int = 0) -> dict[str, Any]:
    """FMP (Huang & Bu 2024): prune the feature maps most sensitive to FGSM/PGD on them, then fine-tune."""
    x, y = clean
    t = time.perf_counter()
    scores = fmp_scores(model, x, y, cfg.fmp)
    drop = maps_to_prune(scores, cfg.fmp.prune_fraction)
    rep = prune_channels_(model, drop, cfg.prune_by, x[:2])
    rep["score_s"] = time.perf_counter() - t
    rep["sensitivity"] = {k: [round(a, 4) for a in v["accuracy"]] for k, v in scores.items()}
    rep["finetune_s"] = clean_finetune(model, clean, cfg, seed)
    return rep


@DEFENSES.register("anp")
def anp_defense(model: nn.Module, clean: Clean, cfg: DefenseConfig, seed: int = 0) -> dict[str, Any]:
    """ANP (Wu & Wang 2021): masks optimised against adversarial map perturbations; maps below the threshold
    are pruned, without fine-tuning (as in the paper)."""
    t = time.perf_counter()
    masks = anp_masks(model, *clean, cfg.anp, seed=seed)
    rep = prune_channels_(model, anp_prune_set(masks, cfg.anp.threshold), cfg.prune_by, clean[0][:2])
    rep.update({"score_s": time.perf_counter() - t, "finetune_s": 0.0,
                "masks": {k: [round(float(v), 4) for v in m] for k, m in masks.items()}})
    return rep


@torch.no_grad()
def mean_activation(model: nn.Module, layer: str, x: Tensor) -> Tensor:
    """``(C,)`` mean ReLU activation of each output map of ``layer`` over the batch and positions."""
    was = model.training
    model.eval()
    fmap = feature_maps(model, layer, x).relu()  # (B, C, *spatial)
    model.train(was)
    return fmap.transpose(0, 1).flatten(1).mean(1)


def _accuracy_without(model: nn.Module, layer: str, channels: list[int], x: Tensor, y: Tensor) -> float:
    """Clean accuracy with ``channels`` of ``layer`` zeroed by a forward hook (the model is not changed)."""

    def zero(module: nn.Module, inputs: Any, out: Tensor) -> Tensor:
        out = out.clone()
        out[:, channels] = 0
        return out

    handle = dict(model.named_modules())[layer].register_forward_hook(zero)
    try:
        return float((predict(model, x) == y).float().mean())
    finally:
        handle.remove()


@DEFENSES.register("fine-pruning")
def fine_pruning(model: nn.Module, clean: Clean, cfg: DefenseConfig, seed: int = 0) -> dict[str, Any]:
    """Fine-pruning (Liu, Dolan-Gavitt & Garg, RAID 2018, Sec. 4): prune the last convolution's maps in
    increasing order of mean clean activation (dormant ones first) while the clean accuracy stays within
    ``fp_max_drop`` of the start (at most ``fp_max_fraction`` of the maps), then fine-tune on the clean set."""
    x, y = clean
    layer = feature_layers(model)[-1]
    order = torch.argsort(mean_activation(model, layer, x)).tolist()  # dormant first
    base = float((predict(model, x) == y).float().mean())
    limit = max(1, int(cfg.fp_max_fraction * len(order)))
    chosen: list[int] = []
    stopped_by = "fp_max_fraction"
    for k in order[:limit]:
        if _accuracy_without(model, layer, [*chosen, k], x, y) < base - cfg.fp_max_drop:
            stopped_by = "clean accuracy"
            break
        chosen.append(k)
    log.info("fine-pruning: %d of %d maps of %s pruned (stopped by %s)", len(chosen), len(order), layer, stopped_by)
    rep = prune_channels_(model, {layer: chosen}, cfg.prune_by, x[:2])
    rep.update({"clean_acc_limit": base - cfg.fp_max_drop, "stopped_by": stopped_by})
    rep["finetune_s"] = clean_finetune(model, clean, cfg, seed)
    return rep


def defend_(model: nn.Module, defense: str, clean: Clean, config: DefenseConfig | None = None,
            seed: int = 0) -> dict[str, Any]:
    """Apply the registered ``defense`` to ``model`` in place using the clean set; returns its report."""
    cfg = config or DefenseConfig()
    t = time.perf_counter()
    rep = DEFENSES.get(defense)(model, clean, cfg, seed)
    rep["defense"] = defense
    rep["seconds"] = time.perf_counter() - t
    return rep
