"""Backdoor defenses on a small clean set: none, fine-tuning, fine-pruning (Liu et al. 2018), FMP.

Each defense is ``fn(model, clean, config, seed) -> report`` filed in ``DEFENSES``; it changes ``model``
in place. Feature maps are pruned by masks or removed for real (``config.prune_by``), then the model is
fine-tuned on the clean set (pruned maps stay pruned).

One recipe serves every defense (frozen on development seeds 100 and 101, docs/results/robustness.md): the
pruning stop rules read the clean accuracy on a stratified held-out quarter of the clean set (``holdout``), and
the clean fine-tuning runs 10 epochs at lr 0.003 (SGD, cosine) on the whole clean set. With ``early_stop`` it
trains on the rest instead and keeps the epoch (0 = before fine-tuning) with the best held-out accuracy (measured
worse on the development seeds, so off by default). Nothing here sees a triggered input.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import Registry
from ..training.loop import Callback
from .anp import ANPConfig, anp_masks, anp_prune_set
from .channels import PRUNE_BY, accuracy_without, feature_layers, feature_maps, prune_channels_
from .fmp import FMPConfig, fmp_scores, maps_to_prune, progressive_maps
from .metrics import predict

log = logging.getLogger(__name__)

DEFENSES = Registry("defense")
Clean = tuple[Tensor, Tensor]


@dataclass
class DefenseConfig:
    """Shared settings: clean fine-tuning (``finetune_epochs`` at ``lr``, SGD, cosine), ``prune_by`` mask|remove,
    FMP's and ANP's knobs, fine-pruning's stop rule (clean accuracy may fall by ``fp_max_drop``, at most
    ``fp_max_fraction`` of the last layer's maps pruned), the held-out part of the clean set the stop rules read
    (``holdout``) and ``early_stop`` of the fine-tuning on it."""

    finetune_epochs: int = 10
    lr: float = 0.003
    batch_size: int = 32
    weight_decay: float = 5e-4
    prune_by: str = "mask"
    fmp: FMPConfig = field(default_factory=FMPConfig)
    anp: ANPConfig = field(default_factory=ANPConfig)
    fp_max_drop: float = 0.04
    fp_max_fraction: float = 0.9
    holdout: float = 0.25
    early_stop: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.finetune_epochs, bool) or not isinstance(self.finetune_epochs, int) \
                or self.finetune_epochs < 0:
            raise ValueError(f"finetune_epochs must be an integer >= 0, got {self.finetune_epochs!r}")
        if not self.lr > 0:
            raise ValueError(f"the fine-tuning lr must be > 0, got {self.lr!r}")
        if self.prune_by not in PRUNE_BY:
            raise ValueError(f"--prune-by must be one of {', '.join(PRUNE_BY)}, got {self.prune_by!r}")
        if isinstance(self.holdout, bool) or not isinstance(self.holdout, (int, float)) \
                or not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"--holdout (the held-out part of the clean set) must be in [0, 1), got {self.holdout!r}")
        if self.early_stop and not self.holdout:
            raise ValueError("early stopping needs a held-out part of the clean set: give holdout > 0 or "
                             "early_stop=False")
        if not 0.0 <= self.fp_max_drop < 1.0 or not 0.0 < self.fp_max_fraction < 1.0:
            raise ValueError(f"fp_max_drop must be in [0, 1) and fp_max_fraction in (0, 1), got "
                             f"{self.fp_max_drop!r}, {self.fp_max_fraction!r}")


def split_clean(clean: Clean, holdout: float, seed: int) -> tuple[Clean, Clean]:
    """``(fit part, held-out part)`` of the clean set: ``round(holdout * n_c)`` examples of each class ``c`` held
    out, but at least one of every class stays in the fitting part (a class of one example is not held out)."""
    x, y = clean
    if not holdout:
        return clean, (x[:0], y[:0])
    gen = torch.Generator().manual_seed(seed + 104723)
    held = []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        k = min(len(idx) - 1, round(holdout * len(idx)))
        held.append(idx[torch.randperm(len(idx), generator=gen)[:k]])
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[torch.cat(held)] = True
    return (x[~mask], y[~mask]), (x[mask], y[mask])


def holdout_accuracy(model: nn.Module, held: Clean) -> float:
    """Accuracy on the held-out clean part (1.0 when it is empty: nothing to hold against)."""
    x, y = held
    return float((predict(model, x) == y).float().mean()) if len(y) else 1.0


class KeepBest(Callback):
    """``fit`` callback: after every epoch, the held-out clean accuracy; the best state (epoch 0 included, the
    earliest of equals) is restored at the end (early stopping that reads clean data only)."""

    def __init__(self, held: Clean) -> None:
        self.held = held
        self.best: tuple[float, int, dict[str, Tensor]] | None = None
        self.curve: list[float] = []

    def _see(self, model: nn.Module, epoch: int) -> None:
        acc = holdout_accuracy(model, self.held)
        self.curve.append(round(acc, 4))
        if self.best is None or acc > self.best[0]:
            self.best = (acc, epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})

    def on_fit_start(self, state: Any) -> None:
        self._see(state.model, 0)

    def on_epoch_end(self, state: Any) -> None:
        self._see(state.model, state.epoch + 1)

    def on_fit_end(self, state: Any) -> None:
        if self.best is not None:
            state.model.load_state_dict(self.best[2])


def clean_finetune(model: nn.Module, clean: Clean, cfg: DefenseConfig, seed: int) -> float:
    """Fine-tune on the clean set (attached masks keep pruned maps at zero); returns the seconds it took.

    With ``cfg.early_stop`` the model trains on the fitting part of the clean set and ends at its best epoch on
    the held-out part (see ``split_clean``, ``KeepBest``); the chosen epoch is logged."""
    return finetune_report(model, clean, cfg, seed)["finetune_s"]


def finetune_report(model: nn.Module, clean: Clean, cfg: DefenseConfig, seed: int) -> dict[str, Any]:
    """``clean_finetune`` with its record: ``finetune_s``, ``best_epoch`` and the held-out accuracy curve."""
    from ..training.loop import fit

    if not cfg.finetune_epochs:
        return {"finetune_s": 0.0}
    t = time.perf_counter()
    data, held = split_clean(clean, cfg.holdout, seed) if cfg.early_stop else (clean, None)
    keep = KeepBest(held) if held is not None else None
    callbacks: list[Callback] = [keep] if keep is not None else []
    fit(model, data, epochs=cfg.finetune_epochs, lr=cfg.lr, batch_size=cfg.batch_size,
        weight_decay=cfg.weight_decay, optimizer="sgd", seed=seed, callbacks=callbacks, eval_every_epoch=False)
    rep: dict[str, Any] = {"finetune_s": time.perf_counter() - t}
    if keep is not None and keep.best is not None:
        rep.update({"best_epoch": keep.best[1], "holdout_curve": keep.curve})
        log.info("clean fine-tuning: best held-out accuracy %.4f at epoch %d of %d", keep.best[0], keep.best[1],
                 cfg.finetune_epochs)
    return rep


@DEFENSES.register("none")
def no_defense(model: nn.Module, clean: Clean, cfg: DefenseConfig, seed: int = 0) -> dict[str, Any]:
    """No defense: the backdoored model as it is (the reference row)."""
    return {"pruned": {}, "finetune_s": 0.0}


@DEFENSES.register("finetune")
def finetune_defense(model: nn.Module, clean: Clean, cfg: DefenseConfig, seed: int = 0) -> dict[str, Any]:
    """Fine-tuning only: the clean set, ``finetune_epochs`` epochs, nothing pruned (FMP's fine-tuning baseline)."""
    return {"pruned": {}, **finetune_report(model, clean, cfg, seed)}


@DEFENSES.register("fmp")
def fmp_defense(model: nn.Module, clean: Clean, cfg: DefenseConfig, seed: int = 0) -> dict[str, Any]:
    """FMP (Huang & Bu 2024): rank the feature maps by the clean accuracy under a perturbation aimed at each,
    prune the most sensitive (``cfg.fmp.rule``: progressively while the held-out clean accuracy holds, or a
    fixed fraction per layer), then fine-tune."""
    x, y = clean
    t = time.perf_counter()
    scores = fmp_scores(model, x, y, cfg.fmp)
    trace: dict[str, Any] = {}
    if cfg.fmp.rule == "progressive":
        held = split_clean(clean, cfg.holdout, seed)[1] if cfg.holdout else clean
        drop, trace = progressive_maps(model, scores, held, cfg.fmp.max_drop, cfg.fmp.prune_fraction)
    else:
        drop = maps_to_prune(scores, cfg.fmp.prune_fraction)
    rep = prune_channels_(model, drop, cfg.prune_by, x[:2])
    rep["score_s"] = time.perf_counter() - t
    rep["sensitivity"] = {k: [round(a, 4) for a in v["accuracy"]] for k, v in scores.items()}
    rep["rule"] = {"rule": cfg.fmp.rule, **trace}
    rep.update(finetune_report(model, clean, cfg, seed))
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


@DEFENSES.register("fine-pruning")
def fine_pruning(model: nn.Module, clean: Clean, cfg: DefenseConfig, seed: int = 0) -> dict[str, Any]:
    """Fine-pruning (Liu, Dolan-Gavitt & Garg, RAID 2018, Sec. 4): prune the last convolution's maps in
    increasing order of mean clean activation (dormant ones first) while the accuracy on the held-out part of the
    clean set (``holdout``; the whole set if 0) stays within ``fp_max_drop`` of the start (at most
    ``fp_max_fraction`` of the maps), then fine-tune on the clean set."""
    x, y = clean
    hx, hy = split_clean(clean, cfg.holdout, seed)[1] if cfg.holdout else clean
    layer = feature_layers(model)[-1]
    order = torch.argsort(mean_activation(model, layer, x)).tolist()  # dormant first
    base = float((predict(model, hx) == hy).float().mean()) if len(hy) else 1.0
    limit = max(1, int(cfg.fp_max_fraction * len(order)))
    chosen: list[int] = []
    stopped_by = "fp_max_fraction"
    for k in order[:limit]:
        if accuracy_without(model, {layer: [*chosen, k]}, hx, hy) < base - cfg.fp_max_drop:
            stopped_by = "clean accuracy"
            break
        chosen.append(k)
    log.info("fine-pruning: %d of %d maps of %s pruned (stopped by %s)", len(chosen), len(order), layer, stopped_by)
    rep = prune_channels_(model, {layer: chosen}, cfg.prune_by, x[:2])
    rep.update({"clean_acc_limit": base - cfg.fp_max_drop, "stopped_by": stopped_by})
    rep.update(finetune_report(model, clean, cfg, seed))
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
