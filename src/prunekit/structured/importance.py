"""Group importance: one score per unit of a group, higher for units that matter more.

Each criterion scores every member (a dimension of a weight) per unit; a reduction over the members
gives the group's score (DepGraph's group-level importance, Fang et al. 2023, Eq. 5).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..registry import METHODS
from .graph import Graph, Group, Member

log = logging.getLogger(__name__)

GROUP_SCORES = METHODS.view("structured")  # group importances; kind "structured" of METHODS
REDUCTIONS = ("mean", "sum", "max")

MemberScore = Callable[[Tensor, Tensor | None, Tensor, int], Tensor]


def unit_rows(w: Tensor, coords: Tensor, n: int) -> Tensor:
    """``(n, k)``: the values of ``w`` (unit dim first) that belong to each of the ``n`` units."""
    x = w.detach().reshape(w.shape[0], -1).float().cpu()  # (positions, rest)
    sel = coords >= 0
    x, c = x[sel], coords[sel]
    return x[torch.argsort(c, stable=True)].reshape(n, -1)


def unit_sums(v: Tensor, coords: Tensor, n: int) -> Tensor:
    """``(n,)``: per-position values ``v`` (positions first) summed into their units."""
    v = v.detach().reshape(v.shape[0], -1).float().sum(1).cpu()  # (positions,)
    sel = coords >= 0
    return torch.zeros(n).index_add_(0, coords[sel], v[sel])


def _norm(p: float) -> MemberScore:
    def f(w: Tensor, g: Tensor | None, coords: Tensor, n: int) -> Tensor:
        """Sum of ``|w|^p`` over each unit's weights."""
        return unit_sums(w.abs().pow(p), coords, n)

    return f


def _taylor(w: Tensor, g: Tensor | None, coords: Tensor, n: int) -> Tensor:
    """First-order Taylor (Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning", Eq. 8):
    ``(sum_s g_s w_s)^2`` over the weights ``s`` of a unit."""
    if g is None:
        return torch.zeros(n)
    return unit_sums(w * g, coords, n) ** 2


def _fpgm(w: Tensor, g: Tensor | None, coords: Tensor, n: int) -> Tensor:
    """FPGM (He et al. 2019, "Filter Pruning via Geometric Median", Eq. 6): sum of distances to all other
    units; units near the geometric median are redundant (low score)."""
    rows = unit_rows(w, coords, n)
    return torch.cdist(rows[None], rows[None])[0].sum(1)


MEMBER_SCORES: dict[str, MemberScore] = {"l1": _norm(1.0), "l2": _norm(2.0), "taylor": _taylor, "fpgm": _fpgm}


def _weights(model: nn.Module, graph: Graph, group: Group, only_norm: bool) -> list[tuple[Member, Tensor]]:
    """Members that carry weights: parameters except biases (and only norm scales if ``only_norm``)."""
    state = dict(model.named_parameters())
    out = []
    for m in group.members:
        if not m.is_param or m.name.endswith("bias") or m.name not in state:
            continue
        if only_norm and not _is_norm_scale(model, m.name):
            continue
        out.append((m, state[m.name]))
    return out


def _is_norm_scale(model: nn.Module, name: str) -> bool:
    path, _, attr = name.rpartition(".")
    mod = model.get_submodule(path) if path else model
    return attr == "weight" and isinstance(mod, nn.modules.batchnorm._BatchNorm)


def _reduce(vals: list[Tensor], reduction: str) -> Tensor:
    s = torch.stack(vals)  # (members, n)
    if reduction == "mean":
        return s.mean(0)
    if reduction == "sum":
        return s.sum(0)
    return s.max(0).values


def member_based(kind: str) -> Callable[..., Tensor]:
    """A group score that applies the member criterion ``kind`` and reduces over members."""

    def score(model: nn.Module, graph: Graph, group: Group, reduction: str = "mean",
              generator: torch.Generator | None = None) -> Tensor:
        """Per-unit score of ``group``."""
        members = _weights(model, graph, group, only_norm=False)
        if not members:
            return torch.ones(group.size)
        vals = []
        for m, w in members:
            w_, c = w.detach().movedim(m.dim, 0), graph.coords(m, group)
            g = w.grad.detach().movedim(m.dim, 0) if w.grad is not None else None
            vals.append(MEMBER_SCORES[kind](w_, g, c, group.size))
        return _reduce(vals, reduction)

    score.__doc__ = f"Group importance from the {kind} of each member's unit slices, reduced over members."
    return score


_MEMBER_BASED = (
    ("l1", "l1", (), "L1 norm of each unit's weights (Li et al. 2017, \"Pruning Filters for Efficient ConvNets\")."),
    ("l2", "l2", (), "L2 norm of each unit's weights, reduced over the group's members (DepGraph, Fang et al. 2023)."),
    ("taylor", "group-taylor", ("taylor",), "Taylor (sum_s g_s w_s)^2 per unit (Molchanov et al. 2019, Eq. 8)."),
    ("fpgm", "fpgm", (), "Summed distance to the other units (FPGM, He et al. 2019, Eq. 6)."),
)
for _k, _name, _aliases, _summary in _MEMBER_BASED:
    GROUP_SCORES.register(_name, aliases=_aliases, summary=_summary)(member_based(_k))


@GROUP_SCORES.register("bn_scale")
def bn_scale(model: nn.Module, graph: Graph, group: Group, reduction: str = "mean",
             generator: torch.Generator | None = None) -> Tensor:
    """Network slimming (Liu et al. 2017, "Learning Efficient Convolutional Networks through Network
    Slimming", Sec. 3): ``|gamma|`` of the BatchNorm scales in the group; L1 where a group has none."""
    members = _weights(model, graph, group, only_norm=True)
    if not members:
        return GROUP_SCORES.get("l1")(model, graph, group, reduction)
    vals = [unit_sums(w.detach().movedim(m.dim, 0).abs(), graph.coords(m, group), group.size) for m, w in members]
    return _reduce(vals, reduction)


@GROUP_SCORES.register("fluctuation",
                       summary="FLAP fluctuation Var(x_j) * ||W[:, j]||^2 over calibration inputs (An et al. 2024).")
def _fluctuation_placeholder(model: nn.Module, graph: Graph, group: Group, reduction: str = "mean",
                             generator: torch.Generator | None = None) -> Tensor:
    """Registered name for FLAP's metric; :func:`group_scores` computes it from calibration inputs."""
    raise ValueError("importance 'fluctuation' is computed by group_scores(..., example_inputs=...)")


@GROUP_SCORES.register("group-random", aliases=("random",))
def random(model: nn.Module, graph: Graph, group: Group, reduction: str = "mean",
           generator: torch.Generator | None = None) -> Tensor:
    """Uniform random scores (the baseline of Li et al. 2022, "Revisiting Random Channel Pruning")."""
    return torch.rand(group.size, generator=generator)


def fluctuation(model: nn.Module, graph: Graph, group: Group, variances: dict[str, Tensor],
                reduction: str = "mean") -> Tensor:
    """FLAP's fluctuation metric (An et al. 2024, "Fluctuation-based Adaptive Structured Pruning for Large
    Language Models", Eq. 4): ``Var(x_j) * ||W[:, j]||^2`` summed over each unit's input columns ``j`` of the
    Linear layers that consume the group, the variance taken over calibration tokens. Groups that feed
    no Linear fall back to L2."""
    params = dict(model.named_parameters())
    vals = []
    for m in group.members:
        layer = m.name.rpartition(".")[0]
        if m.dim == 1 and m.name.endswith("weight") and layer in variances and m.name in params:
            w = params[m.name].detach().float().cpu()  # (out, in)
            per_col = w.pow(2).sum(0) * variances[layer]  # (in,)
            vals.append(unit_sums(per_col[:, None], graph.coords(m, group), group.size))
    if not vals:
        return GROUP_SCORES.get("l2")(model, graph, group, reduction)
    return _reduce(vals, reduction)


ELEMENT_SCORES = ("llm-pruner", "llm-pruner-element", "loraprune")


def from_elements(model: nn.Module, graph: Graph, group: Group, per_elem: dict[str, Tensor], vector: bool,
                  reduction: str) -> Tensor:
    """Group score from per-weight values: each member's unit slices summed (``|sum|`` when ``vector``: LLM-Pruner's
    vector-wise ``|g^T W|``), reduced over the members that have values; L2 where none has."""
    vals = []
    for m in group.members:
        if m.is_param and m.name in per_elem:
            v = unit_sums(per_elem[m.name].movedim(m.dim, 0), graph.coords(m, group), group.size)
            vals.append(v.abs() if vector else v)
    if not vals:
        log.warning("group %d (%s) has no weight with a gradient estimate; scored by l2", group.id, group.kind)
        return GROUP_SCORES.get("l2")(model, graph, group, reduction)
    return _reduce(vals, reduction)


def _needs_inputs(name: str) -> Callable[..., Tensor]:
    def placeholder(model: nn.Module, graph: Graph, group: Group, reduction: str = "mean",
                    generator: torch.Generator | None = None) -> Tensor:
        """Registered name; :func:`group_scores` computes it from the example inputs (one backward pass)."""
        raise ValueError(f"importance {name!r} is computed by group_scores(..., example_inputs=...)")

    return placeholder


for _name, _summary in (
        ("llm-pruner", "LLM-Pruner vector-wise Taylor |g^T W| on the LM loss per member (Ma et al. 2023, Eq. 3)."),
        ("llm-pruner-element", "LLM-Pruner element-wise |g w - (g w)^2 / 2| (diagonal Fisher, Ma et al. 2023, Eq. 5)."),
        ("loraprune", "LoRAPrune |(W + BA) * (dB A + B dA)| from LoRA gradients only (Zhang et al. 2023, Eq. 8)."),
):
    GROUP_SCORES.register(_name, summary=_summary)(_needs_inputs(_name))


def input_variances(model: nn.Module, example_inputs: object) -> dict[str, Tensor]:
    """Per-input-feature variance of every ``nn.Linear`` over the calibration inputs (one forward pass)."""
    from .trace import run_with_hooks

    out: dict[str, Tensor] = {}
    hooks = []
    for path, m in model.named_modules():
        if isinstance(m, nn.Linear):
            def pre(_m: nn.Module, args: tuple, path: str = path) -> None:
                x = args[0].detach().float().reshape(-1, args[0].shape[-1])
                out[path] = x.var(0, unbiased=False).cpu()
            hooks.append(m.register_forward_pre_hook(pre))
    run_with_hooks(model, example_inputs, hooks)
    return out


def group_scores(model: nn.Module, graph: Graph, groups: list[Group], importance: str, reduction: str,
                 seed: int = 0, example_inputs: object = None) -> dict[int, Tensor]:
    """Score every unit of every group with criterion ``importance`` (``fluctuation``, ``llm-pruner`` and
    ``loraprune`` need inputs)."""
    if importance in ELEMENT_SCORES:
        if example_inputs is None:
            raise ValueError(f"importance {importance!r} needs example_inputs (calibration data)")
        from .hf import element_scores

        per_elem, vector = element_scores(model, example_inputs, importance, seed)
        return {g.id: from_elements(model, graph, g, per_elem, vector, reduction).float() for g in groups}
    if importance == "fluctuation":
        if example_inputs is None:
            raise ValueError("importance 'fluctuation' needs example_inputs (calibration data)")
        var = input_variances(model, example_inputs)
        return {g.id: fluctuation(model, graph, g, var, reduction).float() for g in groups}
    fn = GROUP_SCORES.get(importance)
    gen = torch.Generator().manual_seed(seed)
    return {g.id: fn(model, graph, g, reduction, gen).float() for g in groups}
