"""Feature-map (output channel) pruning for the defenses: masks (zeros) or real removal (``structured``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..masks import attach, attached

log = logging.getLogger(__name__)

PRUNE_BY = ("mask", "remove")
_CONVS = (nn.Conv1d, nn.Conv2d)


def feature_layers(model: nn.Module) -> list[str]:
    """Names of the model's convolutions (grouped ones excepted), in module order: whose output maps are pruned."""
    names = [n for n, m in model.named_modules() if isinstance(m, _CONVS) and m.groups == 1]
    if not names:
        raise ValueError(f"{type(model).__name__} has no convolution: feature-map defenses need Conv1d/Conv2d "
                         "layers")
    return names


def channel_masks(model: nn.Module, drop: Mapping[str, Sequence[int]]) -> dict[str, Tensor]:
    """Masks (True = keep) zeroing the weight rows and bias entries of the dropped output channels."""
    mods = dict(model.named_modules())
    out: dict[str, Tensor] = {}
    for name, chans in drop.items():
        conv = mods[name]
        keep = torch.ones(conv.out_channels, dtype=torch.bool)
        keep[list(chans)] = False
        out[f"{name}.weight"] = keep.view(-1, *([1] * (conv.weight.dim() - 1))).expand_as(conv.weight).clone()
        if conv.bias is not None:
            out[f"{name}.bias"] = keep.clone()
    return out


def prune_channels_(model: nn.Module, drop: Mapping[str, Sequence[int]], prune_by: str = "mask",
                    example_inputs: Tensor | None = None) -> dict[str, Any]:
    """Prune the output channels ``drop`` (layer name -> channel indices) of ``model`` in place.

    ``mask``: zeros with shapes unchanged, kept zero by later fine-tuning (attached masks);
    ``remove``: the channels are removed for real through the structured engine (``remove_units_``),
    which needs ``example_inputs``. Returns ``{"pruned": {layer: [channels]}, "params_before", "params_after"}``.
    """
    if prune_by not in PRUNE_BY:
        raise ValueError(f"--prune-by must be one of {', '.join(PRUNE_BY)}, got {prune_by!r}")
    drop = {k: sorted(int(c) for c in v) for k, v in drop.items() if len(v)}
    before = sum(p.numel() for p in model.parameters())
    if drop and prune_by == "mask":
        old = attached(model)
        masks = channel_masks(model, drop)
        if old is not None:  # keep channels pruned earlier (another defense step) pruned
            masks = {k: v & old.masks[k].bool().cpu() if k in old.masks else v for k, v in masks.items()}
        attach(model, masks)
    elif drop:
        _remove(model, drop, example_inputs)
    after = sum(p.numel() for p in model.parameters())
    log.info("pruned feature maps %s by %s (parameters %d -> %d)", drop, prune_by, before, after)
    return {"pruned": drop, "prune_by": prune_by, "params_before": before, "params_after": after}


def _remove(model: nn.Module, drop: Mapping[str, Sequence[int]], example_inputs: Tensor | None) -> None:
    from ..structured import build_graph, remove_units_

    if example_inputs is None:
        raise ValueError("prune_by='remove' needs example_inputs (a small batch) to trace the model")
    graph = build_graph(model, example_inputs)
    keep: dict[int, Tensor] = {}
    for name, chans in drop.items():
        group = _group_of(graph, f"{name}.weight")
        kept = torch.ones(group.size, dtype=torch.bool)
        kept[list(chans)] = False
        if not bool(kept.any()):
            raise ValueError(f"pruning every feature map of {name} would cut the network; keep at least one")
        keep[group.id] = torch.nonzero(kept).flatten()
    remove_units_(model, example_inputs, graph, keep)


def _group_of(graph: Any, weight: str) -> Any:
    """The structured group spanning dimension 0 (output channels) of ``weight``."""
    for g in graph.all_groups:
        if any(m.name == weight and m.dim == 0 for m in g.members):
            return g
    raise ValueError(f"the structured engine found no removable group for the output channels of {weight}")


def feature_maps(model: nn.Module, layer: str, x: Tensor) -> Tensor:
    """The output of ``layer`` on ``x`` (a forward hook; gradients flow)."""
    store: list[Tensor] = []
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: store.append(o))
    try:
        model(x)
    finally:
        handle.remove()
    return store[0]


@torch.no_grad()
def accuracy_without(model: nn.Module, drop: Mapping[str, Sequence[int]], x: Tensor, y: Tensor) -> float:
    """Accuracy on ``(x, y)`` with the maps ``drop`` (layer -> channels) zeroed by forward hooks (eval mode; the
    model is not changed). 1.0 for an empty set."""
    if not len(y):
        return 1.0
    mods = dict(model.named_modules())

    def zero(chans: list[int]) -> Any:
        def hook(module: nn.Module, inputs: Any, out: Tensor) -> Tensor:
            out = out.clone()
            out[:, chans] = 0
            return out

        return hook

    handles = [mods[name].register_forward_hook(zero(list(ch))) for name, ch in drop.items() if len(ch)]
    was = model.training
    model.eval()
    try:
        return float((model(x).argmax(-1) == y).float().mean())
    finally:
        model.train(was)
        for h in handles:
            h.remove()
