"""Training for structure: sparsity regularizers that make channels removable, as training callbacks."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..training.loop import Batch, Callback, TrainState
from .api import Structured, remove_units_, select_units
from .graph import Graph
from .plan import Plan


def _check_lam(lam: Any) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0:
        raise ValueError(f"lam must be a non-negative number, got {lam!r}")
    return float(lam)


class BNSlimming(Callback):
    """Network slimming (Liu et al. 2017, "Learning Efficient Convolutional Networks through Network
    Slimming", Eq. 1): adds the subgradient of ``lam * sum |gamma|`` over every BatchNorm scale."""

    def __init__(self, lam: float = 1e-4) -> None:
        self.lam = _check_lam(lam)

    def on_after_backward(self, state: TrainState, batch: Batch) -> None:
        """Add ``lam * sign(gamma)`` to every BatchNorm scale's gradient."""
        for m in state.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and m.weight.grad is not None:
                m.weight.grad.add_(self.lam * torch.sign(m.weight.detach()))


class PruningAwareRegularizer(Callback):
    """Penalty only on the units chosen for removal (Jiang et al. 2022, "Pruning-aware Sparse
    Regularization for Network Pruning" (MaskSparsity), Eq. 4): the units are chosen once, before
    training, by ``config`` (importance + allocation); the kept units train freely.

    ``mode="bn"``: L1 on the BatchNorm scales of those units (the paper). ``mode="group"``: group lasso
    on every weight slice of those units (all members of the group; works without BatchNorm).
    After training, :meth:`remove_` removes exactly those units.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, config: Structured, lam: float = 1e-4,
                 mode: str = "group") -> None:
        if mode not in ("bn", "group"):
            raise ValueError(f"mode must be 'bn' or 'group', got {mode!r}")
        self.lam, self.mode, self.inputs = _check_lam(lam), mode, example_inputs
        self.graph, self.keep = select_units(model, example_inputs, config)
        self.targets = _targets(model, self.graph, self.keep, bn_only=mode == "bn")

    def on_after_backward(self, state: TrainState, batch: Batch) -> None:
        """Add the penalty's (sub)gradient on the units chosen for removal."""
        for members in self.targets.values():
            if self.mode == "bn":
                for p, dim, pos, _ in members:
                    if p.grad is not None:
                        p.grad.index_add_(dim, pos, self.lam * torch.sign(p.detach().index_select(dim, pos)))
            else:
                _group_lasso_grad(members, self.lam)

    def penalty(self) -> float:
        """Current L2 norm of the weights chosen for removal (falls toward 0 as training proceeds)."""
        sq = sum(float(p.detach().index_select(d, pos).pow(2).sum()) for ms in self.targets.values()
                 for p, d, pos, _ in ms)
        return sq ** 0.5

    def remove_(self, model: nn.Module) -> Plan:
        """Remove the units chosen at the start; returns the plan."""
        return remove_units_(model, self.inputs, self.graph, self.keep)


def _targets(model: nn.Module, graph: Graph, keep: dict[int, Tensor], bn_only: bool) -> dict:
    """Per shrinking group: (parameter, dim, positions of removed units, unit of each position)."""
    params = dict(model.named_parameters())
    out: dict[int, list] = {}
    for g in graph.groups(include_inexact=True):
        if g.id not in keep:
            continue
        removed = torch.ones(g.size, dtype=torch.bool)
        removed[keep[g.id]] = False
        for m in g.members:
            if not m.is_param or m.name not in params:
                continue
            mod = model.get_submodule(m.name.rpartition(".")[0]) if "." in m.name else model
            if bn_only and not (isinstance(mod, nn.modules.batchnorm._BatchNorm) and m.name.endswith("weight")):
                continue
            c = graph.coords(m, g)
            sel = (c >= 0) & removed[c.clamp(min=0)]
            pos = torch.nonzero(sel).flatten()
            p = params[m.name]
            out.setdefault(g.id, []).append((p, m.dim, pos.to(p.device), c[pos]))
    return out


def _group_lasso_grad(members: list, lam: float) -> None:
    """Add ``lam * w / ||w_unit||`` to the gradients: the group-lasso subgradient per removed unit."""
    n = int(max(int(u.max()) for _, _, _, u in members if len(u)) + 1) if any(len(u) for *_, u in members) else 0
    if n == 0:
        return
    sq = torch.zeros(n)
    for p, d, pos, u in members:
        v = p.detach().index_select(d, pos).movedim(d, 0).reshape(len(pos), -1).float().pow(2).sum(1).cpu()
        sq.index_add_(0, u, v)
    inv = lam / sq.sqrt().clamp(min=1e-12)  # (units,)
    for p, d, pos, u in members:
        if p.grad is None:
            continue
        w = p.detach().index_select(d, pos)
        shape = [1] * w.dim()
        shape[d] = len(pos)
        p.grad.index_add_(d, pos, w * inv[u].reshape(shape).to(w.device, w.dtype))
