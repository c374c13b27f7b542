"""Recover a pruned model in place: choose the trainable set, train, merge, prove the pattern is kept."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Iterable
from typing import Any

from torch import Tensor, nn

from . import params as P
from .config import Recovery
from .loop import kd_loss, lm_loss, train

log = logging.getLogger(__name__)
DEFAULT_EXCLUDE = ("lm_head",)


def target_linears(model: nn.Module, masks: dict[str, Tensor], exclude: Iterable[str] = DEFAULT_EXCLUDE) -> list[str]:
    """The pruned ``nn.Linear`` layers (those with a mask); without masks every linear but ``exclude``."""
    pats = tuple(exclude)
    names = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or any(fnmatch.fnmatch(name, p) or name.split(".")[-1] == p for p in pats):
            continue
        if not masks or f"{name}.weight" in masks:
            names.append(name)
    return names


def _trainable(model: nn.Module, cfg: Recovery, masks: dict[str, Tensor],
               layers: list[str]) -> tuple[dict[str, nn.Parameter], Callable[[], None]]:
    """The trained parameters of ``cfg.trains`` and the merge that folds them into plain weights."""
    P.freeze_all(model)
    if cfg.trains == "lora":
        from .lora import add_lora, merge_lora

        return add_lora(model, layers, masks, cfg.lora_rank, cfg.lora_alpha, cfg.seed), lambda: merge_lora(model)
    if cfg.trains == "all":
        params = dict(model.named_parameters())
        for p in params.values():
            p.requires_grad_(True)
        return params, lambda: None
    if cfg.add_bias:
        P.add_biases(model)
    params = P.perp_parameters(model)
    scales: P.RowScales | P.ScaleLoRA | None = None
    if cfg.scale_rank is not None:
        scales = P.ScaleLoRA(model, layers, cfg.scale_rank, cfg.seed)
    elif cfg.scaled:
        scales = P.RowScales(model, layers, rows=cfg.linear_scale, columns=cfg.column_scale)
    if scales is not None:
        params.update(scales.parameters())
    for p in params.values():
        p.requires_grad_(True)
    return params, (scales.merge if scales is not None else lambda: None)


def pruned_nonzeros(model: nn.Module, masks: dict[str, Tensor]) -> int:
    """How many pruned entries (mask False) are not exactly zero; 0 when the pattern is kept."""
    state = dict(model.named_parameters())
    return sum(int((state[k].detach()[~m.to(state[k].device)] != 0).sum()) for k, m in masks.items() if k in state)


def recover_(model: nn.Module, stream: Tensor, cfg: Recovery, masks: dict[str, Tensor] | None = None,
             teacher: nn.Module | None = None, exclude: Iterable[str] = DEFAULT_EXCLUDE,
             progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Retrain ``model`` on windows of ``stream`` as ``cfg`` says; adapters are merged, masks kept exactly.

    Returns the trainable parameter count (and fraction of all parameters), the training record and
    ``pruned_nonzero`` (0: every pruned weight is still exactly zero; anything else raises).
    """
    masks = dict(masks or {})
    if cfg.method == "distill" and teacher is None:
        raise ValueError("recovery method 'distill' needs the dense teacher model")
    total = sum(p.numel() for p in model.parameters())
    layers = target_linears(model, masks, exclude)
    params, merge = _trainable(model, cfg, masks, layers)
    live = dict(model.named_parameters())
    after = (lambda: P.enforce_masks(live, masks)) if cfg.trains == "all" and masks else None
    loss = kd_loss(teacher, cfg.temperature) if cfg.method == "distill" else lm_loss
    log.info("recovery %s: training %d parameters (%.4f%% of %d)", cfg.method, P.count(params),
             100 * P.count(params) / total, total)
    record = train(model, list(params.values()), stream, cfg, loss, after, progress)
    merge()
    P.freeze_all(model)
    P.enforce_masks(dict(model.named_parameters()), masks)
    bad = pruned_nonzeros(model, masks)
    if bad:
        raise RuntimeError(f"recovery changed the sparsity pattern: {bad} pruned weights are not zero")
    return {"trainable_params": P.count(params), "total_params": total,
            "trainable_fraction": P.count(params) / total, "trained": cfg.trains, "layers_adapted": len(layers)
            if cfg.trains == "lora" or cfg.scaled else 0, "pruned_nonzero": bad, **record}


def masks_equal(before: dict[str, Tensor], model: nn.Module) -> bool:
    """True if every masked parameter of ``model`` is zero exactly where ``before`` says pruned."""
    return pruned_nonzeros(model, before) == 0 and all(k in dict(model.named_parameters()) for k in before)

