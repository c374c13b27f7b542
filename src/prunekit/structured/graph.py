"""The dependency graph: groups of coupled dimensions, and MACs / parameters as functions of widths."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from .trace import TraceError, TraceResult, resolve_ignore, trace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Member:
    """One place a group lives: dimension ``dim`` of state tensor ``name``."""

    name: str
    dim: int
    is_param: bool


@dataclass
class Group:
    """A set of coupled units removed together: ``size`` channels, heads or neurons."""

    id: int  # the leaf atom
    size: int
    members: list[Member]
    inexact: str | None = None  # why removing zero units would still change outputs (None: exact)
    kind: str = "channel"  # "channel" or "head"

    def describe(self) -> str:
        """One line: size, kind and the tensors it spans."""
        names = ", ".join(f"{m.name}[{m.dim}]" for m in self.members[:6])
        more = f" (+{len(self.members) - 6})" if len(self.members) > 6 else ""
        return f"group {self.id}: {self.size} {self.kind}s -> {names}{more}"


class Graph:
    """Coupled dimensions of one model, traced from example inputs."""

    def __init__(self, tr: TraceResult) -> None:
        self.tr = tr
        self.A = tr.atoms
        self.expanded = {k: [self.A.expand(d) for d in lay] for k, lay in tr.tensors.items()}
        self._macs = [[self.A.expand(n) for n in nodes] for _, nodes in tr.macs]
        self.untraced_macs = 0  # MACs of ops with no MAC term here (an LSTM): a fixed cost (api.count_untraced_)
        self.all_groups = self._collect()

    def _collect(self) -> list[Group]:
        where: dict[int, list[Member]] = {}
        for k, lay in self.expanded.items():
            for d, node in enumerate(lay):
                for a in dict.fromkeys(self.A.leaves(node)):
                    where.setdefault(a, []).append(Member(k, d, self.tr.is_param[k]))
        heads = {a for _, q, kv in self.tr.heads for n in (q, kv) for a in self.A.leaves(n)}
        out = []
        self.fixed_groups: list[tuple[Group, str]] = []  # spaces of parameters that may not shrink, and why
        for a, members in sorted(where.items()):
            if self.A.size[a] < 2 or not any(m.is_param for m in members):
                continue
            g = Group(a, self.A.size[a], members, self.A.inexact.get(a), "head" if a in heads else "channel")
            if a in self.A.fixed:
                self.fixed_groups.append((g, self.A.fixed[a]))
            else:
                out.append(g)
        return out

    def blockers(self, include_inexact: bool = False, limit: int = 12) -> list[dict[str, Any]]:
        """Why parameter dims are not prunable: fixed spaces and (unless ``include_inexact``) spaces mixed by a
        statistic, the largest first, as ``{"group", "size", "reason", "members"}`` (at most ``limit``)."""
        rows = [(g, why) for g, why in self.fixed_groups if not why.startswith("model input")]
        if not include_inexact:
            rows += [(g, f"mixed by a statistic: {g.inexact} (prune_normalized=True removes it, inexactly)")
                     for g in self.all_groups if g.inexact is not None]
        rows.sort(key=lambda r: (-r[0].size * len(r[0].members), r[0].id))
        return [{"group": g.id, "size": g.size, "reason": why,
                 "members": [f"{m.name}[{m.dim}]" for m in g.members[:4]] + ([f"+{len(g.members) - 4}"]
                                                                           if len(g.members) > 4 else [])}
                for g, why in rows[:limit]]

    def groups(self, include_inexact: bool = False) -> list[Group]:
        """Prunable groups; those whose units are mixed by a statistic only if ``include_inexact``."""
        return [g for g in self.all_groups if include_inexact or g.inexact is None]

    def macs(self, counts: dict[int, int] | None = None) -> int:
        """Multiply-accumulates of one forward pass when group ``a`` keeps ``counts[a]`` units (plus the fixed
        ``untraced_macs``)."""
        return self._total(self._macs, counts or {}) + self.untraced_macs

    def params(self, counts: dict[int, int] | None = None) -> int:
        """Number of parameters when group ``a`` keeps ``counts[a]`` units."""
        terms = [lay for k, lay in self.expanded.items() if self.tr.is_param[k]]
        return self._total(terms, counts or {})

    def _total(self, terms: list[list], counts: dict[int, int]) -> int:
        total = 0
        for nodes in terms:
            v = 1
            for n in nodes:
                v *= self.A.expanded_size(n, counts)
            total += v
        return total

    def coords(self, member: Member, group: Group) -> Tensor:
        """Unit index of ``group`` at each position of the member's dim (-1 where absent)."""
        return self.A.coords(self.expanded[member.name][member.dim], group.id)

    def check_barriers(self, include_inexact: bool) -> None:
        """Raise if an op without a coupling rule receives a prunable group, naming its module."""
        live = {g.id for g in self.groups(include_inexact)}
        for b in self.tr.barriers:
            hit = {a for n in b.nodes for a in self.A.leaves(n)} & live
            if hit:
                mod = b.module or "the top-level model"
                raise TraceError(
                    f"module {mod!r} runs {b.op}, which prunekit cannot follow channels through; "
                    f"add {mod!r} to ignore=[...] to leave it (and the channels it touches) whole, or "
                    f"register a rule with prunekit.structured.register_op({b.op.split('.')[1]!r})")

    def summary(self) -> list[dict[str, Any]]:
        """JSON-able description of every prunable group."""
        return [{"id": g.id, "size": g.size, "kind": g.kind, "exact": g.inexact is None,
                 "members": [f"{m.name}[{m.dim}]" for m in g.members]} for g in self.all_groups]


def build_graph(model: nn.Module, example_inputs: Any, ignore: list[str] | tuple[str, ...] = ()) -> Graph:
    """Trace ``model`` on ``example_inputs`` and group every pair of coupled dimensions."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    ignored = resolve_ignore(model, list(ignore))
    return Graph(trace(model, example_inputs, ignored))
