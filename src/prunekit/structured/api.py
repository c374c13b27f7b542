"""``remove_(model, example_inputs, Structured(...))``: trace, score, allocate, remove, verify; returns a Plan."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import torch
from torch import nn

from ..accounting import count_macs
from ..config import Config
from ..errors import check_choice, check_fraction, check_sparsity
from ..registry import METHODS
from . import hf
from .compensate import add_bias_, bias_shifts
from .depth import candidate_containers, remove_blocks_, remove_blocks_to_budget_
from .graph import Graph, build_graph
from .importance import GROUP_SCORES, REDUCTIONS, group_scores
from .plan import LAST_PLAN, Plan, apply_plan_, chain
from .remove import Undo, output_shapes, shrink_tensors_, sync_modules_, verify
from .select import allocate_widths, keep_indices, min_counts, uniform_counts
from .trace import call_model, output_tensors, resolve_ignore

log = logging.getLogger(__name__)

ALLOCATION_RULES = ("uniform", "global")


@dataclasses.dataclass
class Structured(Config):
    """Structured removal of channels, heads, MLP neurons and blocks to a MACs or parameter budget.

    ``target_macs`` / ``target_params``: fraction of the original to keep, in (0, 1]; or ``sparsity``:
    the fraction of units every group loses (a channel ratio, as torch-pruning's); give one of the three.
    ``importance``: l1, l2, taylor, fpgm, bn_scale, fluctuation (FLAP, from the example inputs) or random;
    ``reduction`` over a group's members.
    ``allocation``: ``uniform`` (every group loses the same fraction) or ``global`` (one ranking).
    ``ignore``: module names or glob patterns whose tensors are never touched.
    ``round_to``: kept channel counts are multiples of this. ``max_group_sparsity``: no group loses more.
    ``prune_normalized``: also remove units mixed by LayerNorm/RMSNorm/softmax statistics (inexact).
    ``remove_blocks``: fraction of repeated same-shape blocks removed first (in each stack), lowest
    block influence first; or ``"auto"`` (depth first): with a MACs or parameter target, remove blocks
    over all stacks, lowest influence first, for as long as the budget allows, then widths fill the rest.
    Blocks give the most speed per MAC removed on CPUs (docs/RESULTS.md).
    ``bias_compensation``: FLAP bias compensation of layers that lose inputs (calibrated on the inputs).
    """

    target_macs: float | None = None
    target_params: float | None = None
    sparsity: float | None = None
    importance: str = "l2"
    reduction: str = "mean"
    allocation: str = "uniform"
    ignore: list[str] = dataclasses.field(default_factory=list)
    round_to: int = 1
    max_group_sparsity: float = 0.9
    prune_normalized: bool = False
    remove_blocks: float | str = 0.0
    bias_compensation: bool = False
    seed: int = 0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field and its accepted values."""
        given = [n for n in ("target_macs", "target_params", "sparsity") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of target_macs, target_params or sparsity, not {' and '.join(given)}")
        for name in ("target_macs", "target_params"):
            if getattr(self, name) is not None:
                check_fraction(getattr(self, name), name)
        check_sparsity(self.sparsity, "sparsity", allow_none=True)
        if not given and not self.remove_blocks:
            raise ValueError("Structured needs target_macs or target_params (a fraction in (0, 1] to keep), "
                             "sparsity (a fraction in [0, 1) of every group to remove), or remove_blocks > 0")
        check_choice(self.importance, "importance", GROUP_SCORES.names())
        check_choice(self.reduction, "reduction", REDUCTIONS)
        check_choice(self.allocation, "allocation", ALLOCATION_RULES)
        if isinstance(self.ignore, str) or not all(isinstance(s, str) for s in self.ignore):
            raise ValueError(f"ignore must be a list of module names, got {self.ignore!r}")
        self.ignore = list(self.ignore)
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise ValueError(f"round_to must be a positive integer, got {self.round_to!r}")
        check_sparsity(self.max_group_sparsity, "max_group_sparsity")
        if isinstance(self.remove_blocks, str):
            check_choice(self.remove_blocks, "remove_blocks", ["auto"])
            if self.target_macs is None and self.target_params is None:
                raise ValueError("remove_blocks='auto' removes blocks down to a budget: give target_macs or "
                                 "target_params too (or a fraction in [0, 1) as remove_blocks)")
        else:
            check_sparsity(self.remove_blocks, "remove_blocks")


@METHODS.register("structured", kind="structured", config=Structured)
def remove_(model: nn.Module, example_inputs: Any, config: Structured | Plan | dict,
            data: tuple[torch.Tensor, torch.Tensor] | None = None) -> Plan:
    """Remove units from ``model`` in place to meet ``config``'s budget; return the JSON-able plan.

    ``config`` may also be a :class:`Plan` (or its dict) from an earlier removal, which is replayed.
    ``data``: an ``(x, y)`` batch whose cross-entropy gives Taylor scores (else the mean squared
    output on ``example_inputs`` is the loss). On any error the model is left exactly as it was.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(config, dict):
        config = Plan.from_dict(config) if config.get("type") == "prunekit.structured.plan" else \
            Config.from_dict(config)
    if isinstance(config, Plan):
        return _replay(model, example_inputs, config)
    if not isinstance(config, Structured):
        raise TypeError(f"config must be prunekit.Structured or a Plan, got {type(config).__name__}")
    if example_inputs is None:
        raise ValueError("example_inputs are required: a tensor, a tuple of positional inputs or a dict")
    ignored = resolve_ignore(model, config.ignore)
    undo = Undo()
    try:
        return _remove(model, example_inputs, config, ignored, data, undo)
    except BaseException:
        undo.rollback()
        raise


def _replay(model: nn.Module, example_inputs: Any, plan: Plan) -> Plan:
    expected = output_shapes(model, example_inputs) if example_inputs is not None else None
    undo = Undo()
    apply_plan_(model, plan, undo)
    if expected is not None:
        try:
            verify(model, example_inputs, expected)
        except BaseException:
            undo.rollback()
            raise
    return plan


def _remove(model: nn.Module, inputs: Any, cfg: Structured, ignored: set[str], data: Any, undo: Undo) -> Plan:
    t0 = time.perf_counter()
    source = hf.source_of(model) if hf.is_hf(model) else None
    graph = count_untraced_(model, inputs, build_graph(model, inputs, sorted(ignored)))
    expected = graph.tr.output_shapes
    base = {"macs": graph.macs(), "params": sum(p.numel() for p in model.parameters())}
    plan = Plan(config=cfg.to_dict(), source=source)
    if cfg.remove_blocks:
        graph = _depth(model, inputs, cfg, ignored, graph, plan, undo)
    groups = graph.groups(cfg.prune_normalized)
    graph.check_barriers(cfg.prune_normalized)
    counts = _allocate(model, graph, groups, cfg, base, inputs, data)
    keep = keep_indices(groups, counts["scores"], counts["counts"])
    shifts = bias_shifts(model, graph, keep, inputs) if cfg.bias_compensation and keep else {}
    shrink_(model, graph, keep, plan, undo)
    plan.added = add_bias_(model, shifts, undo)
    verify(model, inputs, expected)
    chain(model, plan)
    undo.set(model.__dict__, LAST_PLAN, plan)
    state = model.state_dict()
    plan.aliases = {k: v for k, v in graph.tr.aliases.items() if len(v) > 1}
    plan.shapes = {k: list(state[k].shape) for k in [*plan.tensors, *plan.added] if k in state}
    after = {"macs": graph.macs(_counts(keep)), "params": sum(p.numel() for p in model.parameters())}
    if graph.untraced_macs:
        plan.summary["macs_untraced"] = graph.untraced_macs
    plan.summary = {**plan.summary, "macs_before": base["macs"], "macs_after": after["macs"],
                    "params_before": base["params"], "params_after": after["params"], "groups": len(groups),
                    "groups_shrunk": len(keep), "seconds": round(time.perf_counter() - t0, 3)}
    log.info("structured removal: MACs %d -> %d, params %d -> %d", base["macs"], after["macs"], base["params"],
             after["params"])
    _flag_nothing_removed(plan, cfg, graph, groups, keep)
    return plan


def _flag_nothing_removed(plan: Plan, cfg: Structured, graph: Graph, groups: list, keep: dict) -> None:
    """Record ``removed_nothing`` (and why, naming the groups that blocked it, with a warning) in the plan's
    summary: no silent success."""
    nothing = not keep and not plan.blocks
    plan.summary["removed_nothing"] = nothing
    if not nothing:
        return
    blocked = graph.blockers(cfg.prune_normalized)
    if not groups:
        why = (f"no removable group: every group is ignored or behind a normalization barrier (ignore={cfg.ignore}, "
               f"prune_normalized={cfg.prune_normalized})")
    else:
        why = (f"all {len(groups)} groups keep every unit: the budget is already met or max_group_sparsity="
               f"{cfg.max_group_sparsity} / round_to={cfg.round_to} leave nothing to remove")
        blocked = [{"group": g.id, "size": g.size, "reason": "keeps every unit (budget, round_to or "
                    "max_group_sparsity)", "members": [f"{m.name}[{m.dim}]" for m in g.members[:4]]}
                   for g in sorted(groups, key=lambda g: -g.size)[:6]] + blocked[:6]
    names = "; ".join(f"group {b['group']} ({b['size']} units: {', '.join(b['members'][:2])}): {b['reason']}"
                      for b in blocked[:4])
    if names:
        why += f". Blocking groups: {names}"
    plan.summary["removed_nothing_reason"] = why
    plan.summary["blocked_groups"] = blocked
    log.warning("structured removal removed nothing: %s", why)


def select_units(model: nn.Module, example_inputs: Any, config: Structured,
                 data: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[Graph, dict[int, torch.Tensor]]:
    """Trace, score and allocate as ``remove_`` would, but change nothing: the graph and the kept units."""
    if not isinstance(config, Structured):
        raise TypeError(f"config must be prunekit.Structured, got {type(config).__name__}")
    if config.remove_blocks:
        raise ValueError("select_units chooses widths only; use remove_blocks=0 (remove blocks with remove_)")
    ignored = resolve_ignore(model, config.ignore)
    graph = count_untraced_(model, example_inputs, build_graph(model, example_inputs, sorted(ignored)))
    groups = graph.groups(config.prune_normalized)
    graph.check_barriers(config.prune_normalized)
    base = {"macs": graph.macs(), "params": sum(p.numel() for p in model.parameters())}
    counts = _allocate(model, graph, groups, config, base, example_inputs, data)
    return graph, keep_indices(groups, counts["scores"], counts["counts"])


def _counts(keep: dict[int, torch.Tensor]) -> dict[int, int]:
    return {g: len(v) for g, v in keep.items()}


def shrink_(model: nn.Module, graph: Graph, keep: dict[int, torch.Tensor], plan: Plan, undo: Undo) -> Plan:
    """Remove the units not in ``keep`` (group id -> kept unit indices) and record it in ``plan``:
    tensors, width attributes and, for transformers, the config."""
    plan.tensors.update(shrink_tensors_(model, graph, keep, undo))
    plan.attributes.update(sync_modules_(model, graph, _counts(keep), undo))
    if hf.is_hf(model):
        _update_hf_config(model, graph, _counts(keep), plan, undo)
    return plan


def remove_units_(model: nn.Module, example_inputs: Any, graph: Graph, keep: dict[int, torch.Tensor]) -> Plan:
    """Remove exactly the units not listed in ``keep`` (group id -> kept indices) from a traced model."""
    expected = output_shapes(model, example_inputs)
    plan, undo = Plan(source=hf.source_of(model) if hf.is_hf(model) else None), Undo()
    try:
        shrink_(model, graph, {g: torch.as_tensor(v, dtype=torch.long) for g, v in keep.items()}, plan, undo)
        verify(model, example_inputs, expected)
        chain(model, plan)
        undo.set(model.__dict__, LAST_PLAN, plan)
    except BaseException:
        undo.rollback()
        raise
    return plan


def _depth(model: nn.Module, inputs: Any, cfg: Structured, ignored: set[str], graph: Graph, plan: Plan,
           undo: Undo) -> Graph:
    """Remove blocks first, then re-trace the shallower model."""
    conts = candidate_containers(model, ignored)
    if hf.is_hf(model):
        lc = hf.layer_container(model)
        conts = [lc] if lc in conts else []
    if cfg.remove_blocks == "auto":
        keep, budget = (cfg.target_macs, "macs") if cfg.target_macs is not None else (cfg.target_params, "params")
        plan.blocks = remove_blocks_to_budget_(model, inputs, keep, budget, conts, undo)
    else:
        plan.blocks = remove_blocks_(model, inputs, cfg.remove_blocks, conts, undo)
    if hf.is_hf(model):
        for path, kept in plan.blocks.items():
            plan.hf_config = {**(plan.hf_config or {}), **hf.drop_layers_in_config_(model, kept, undo)}
            plan.attributes.update(hf.renumber_layers_(model, path, undo))
    return count_untraced_(model, inputs, build_graph(model, inputs, sorted(ignored))) if plan.blocks else graph


def count_untraced_(model: nn.Module, inputs: Any, graph: Graph) -> Graph:
    """Set ``graph.untraced_macs``: the MACs ``prunekit.accounting.count_macs`` counts that the traced graph has no
    term for (ops without a coupling rule, such as an ignored LSTM), kept as a fixed cost so that a MACs target is
    a fraction of the whole model's MACs; logged as a warning when nonzero."""
    graph.untraced_macs = 0
    total = count_macs(model, inputs)
    graph.untraced_macs = max(0, total - graph.macs())
    if graph.untraced_macs:
        log.warning("structured removal: %d of the model's %d MACs (%.1f%%) run in ops the graph has no MAC term "
                    "for; counted as a fixed cost that removal cannot reduce", graph.untraced_macs, total,
                    100 * graph.untraced_macs / max(total, 1))
    return graph


def _allocate(model: nn.Module, graph: Graph, groups: list, cfg: Structured, base: dict, inputs: Any,
              data: Any) -> dict[str, Any]:
    """Check the budget is reachable, score the groups, and choose how many units each keeps."""
    if cfg.target_macs is not None:
        cost, budget, what = graph.macs, cfg.target_macs * base["macs"], "target_macs"
    elif cfg.target_params is not None:
        cost, budget, what = graph.params, cfg.target_params * base["params"], "target_params"
    elif cfg.sparsity is not None:
        scores = _scores(model, graph, groups, cfg, inputs, data)
        mins = min_counts(groups, cfg.max_group_sparsity, cfg.round_to)
        return {"counts": uniform_counts(groups, cfg.sparsity, mins, cfg.round_to), "scores": scores}
    else:
        return {"counts": {}, "scores": {}}
    floor = cost(min_counts(groups, cfg.max_group_sparsity, cfg.round_to))
    if floor > budget * (1 + 1e-9):
        unit = "MACs" if what == "target_macs" else "parameters"
        reach = floor / base["macs" if what == "target_macs" else "params"]
        raise ValueError(f"{what}={getattr(cfg, what)} is unreachable: with every prunable group at its smallest "
                         f"width (max_group_sparsity={cfg.max_group_sparsity}, ignore={cfg.ignore}) the model keeps "
                         f"{reach:.3f} of its {unit}; accepted: {what} in [{reach:.3f}, 1], or raise "
                         f"max_group_sparsity, or ignore fewer modules{_blocking(graph, cfg)}")
    scores = _scores(model, graph, groups, cfg, inputs, data)
    counts = allocate_widths(graph, groups, scores, budget=budget, cost=cost, rule=cfg.allocation,
                      max_group_sparsity=cfg.max_group_sparsity, round_to=cfg.round_to)
    return {"counts": counts, "scores": scores}


def _blocking(graph: Graph, cfg: Structured) -> str:
    """The largest groups that may not shrink, for error messages ("" if none)."""
    rows = graph.blockers(cfg.prune_normalized, limit=3)
    return ("; largest blocked groups: " + "; ".join(f"group {b['group']} ({b['size']} units: "
                                                     f"{', '.join(b['members'][:2])}): {b['reason']}" for b in rows)
            ) if rows else ""


def _scores(model: nn.Module, graph: Graph, groups: list, cfg: Structured, inputs: Any, data: Any) -> dict:
    if cfg.importance != "taylor" or all(p.grad is not None for p in model.parameters() if p.requires_grad):
        return group_scores(model, graph, groups, cfg.importance, cfg.reduction, cfg.seed, inputs)
    had = {id(p) for p in model.parameters() if p.grad is not None}
    was = model.training
    model.eval()  # no BatchNorm statistics change while scoring
    with torch.enable_grad():
        if data is not None:
            x, y = data
            loss = nn.functional.cross_entropy(model(x), y)
        else:
            loss = sum(o.float().pow(2).mean() for o in output_tensors(call_model(model, inputs))
                       if o.is_floating_point())
        loss.backward()
    try:
        return group_scores(model, graph, groups, cfg.importance, cfg.reduction, cfg.seed)
    finally:
        model.train(was)
        for p in model.parameters():
            if id(p) not in had:
                p.grad = None


def _update_hf_config(model: nn.Module, graph: Graph, counts: dict[int, int], plan: Plan, undo: Undo) -> None:
    widths = hf.per_layer_widths(model, graph, counts)
    new = hf.updated_config(model, widths, hf.head_dim(model))
    new.pop(next((k for k in hf.LAYER_KEYS if k in new), ""), None)  # depth handled by _depth
    hf.set_config_(model, new, undo)
    plan.hf_config = {**(plan.hf_config or {}), **new}
    plan.hf_loadable = hf.loadable(model)
    plan.summary["per_layer"] = widths
