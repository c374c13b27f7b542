"""FLAP bias compensation: what removed input channels contributed on average goes into the bias.

An et al. 2024, "Fluctuation-based Adaptive Structured Pruning for Large Language Models" (AAAI),
Eq. 7: for a layer ``y = W x + b`` losing input channels ``R``, set ``b' = b + W[:, R] @ mean(x[R])``,
the mean taken over calibration tokens. Exact in expectation; it removes the mean shift that dropping
heads or MLP neurons causes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .graph import Graph
from .remove import Undo, owner
from .trace import run_with_hooks


def _linear_inputs(model: nn.Module, graph: Graph, keep: dict[int, Tensor]) -> dict[str, Tensor]:
    """Linear layers whose input dim shrinks -> kept input positions."""
    out = {}
    for path, m in model.named_modules():
        if isinstance(m, nn.Linear):
            name = f"{path}.weight" if path else "weight"
            lay = graph.expanded.get(name)
            if lay is not None and set(graph.A.leaves(lay[1])) & keep.keys():
                out[path] = graph.A.kept_positions(lay[1], keep)
    return out


def input_means(model: nn.Module, example_inputs: Any, paths: list[str]) -> dict[str, Tensor]:
    """Mean input (per input feature) of each Linear in ``paths`` over the calibration inputs."""
    sums: dict[str, Tensor] = {}
    hooks = []
    for p in paths:
        def pre(_m: nn.Module, args: tuple, p: str = p) -> None:
            x = args[0].detach().float()
            sums[p] = x.reshape(-1, x.shape[-1]).mean(0)
        hooks.append(model.get_submodule(p).register_forward_pre_hook(pre))
    run_with_hooks(model, example_inputs, hooks)
    return sums


def bias_shifts(model: nn.Module, graph: Graph, keep: dict[int, Tensor], example_inputs: Any) -> dict[str, Tensor]:
    """``W[:, removed] @ mean(x[removed])`` for every Linear losing inputs (before removal)."""
    kept = _linear_inputs(model, graph, keep)
    means = input_means(model, example_inputs, list(kept))
    out = {}
    for path, pos in kept.items():
        if path not in means:
            continue
        w = model.get_submodule(path).weight.detach().float()  # (out, in)
        removed = torch.ones(w.shape[1], dtype=torch.bool)
        removed[pos] = False
        out[path] = w[:, removed.to(w.device)] @ means[path][removed.to(w.device)]  # (out,)
    return out


def add_bias_(model: nn.Module, shifts: dict[str, Tensor], undo: Undo) -> dict[str, list[int]]:
    """Add each shift to its layer's bias, creating the bias where the layer had none."""
    added = {}
    for path, s in shifts.items():
        m = model.get_submodule(path)
        if m.bias is None:
            mod, _ = owner(model, f"{path}.bias")
            undo.set(mod._parameters, "bias", nn.Parameter(s.to(m.weight.dtype)))
            added[f"{path}.bias"] = [int(s.shape[0])]
        else:
            undo.set(m._parameters, "bias", nn.Parameter((m.bias.detach() + s.to(m.bias.dtype)),
                                                         requires_grad=m.bias.requires_grad))
    return added
