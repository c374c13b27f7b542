"""Shared helpers: zero some units of every group, then check that removing them changes nothing."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from prunekit.structured.api import remove_units_
from prunekit.structured.graph import Graph, build_graph
from prunekit.structured.trace import call_model, output_tensors


def forward(model: nn.Module, inputs: Any) -> list[Tensor]:
    model.eval()
    with torch.no_grad():
        return [o.clone() for o in output_tensors(call_model(model, inputs))]


def zero_units_(model: nn.Module, graph: Graph, drop: dict[int, Tensor]) -> None:
    """Set every parameter slice of the dropped units of each group to zero."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for g in graph.groups():
            if g.id not in drop:
                continue
            for m in g.members:
                if m.name in params:
                    c = graph.coords(m, g)
                    hit = torch.isin(c, drop[g.id])
                    params[m.name].index_fill_(m.dim, torch.nonzero(hit).flatten(), 0.0)


def removal_error(model: nn.Module, inputs: Any, every: int = 2) -> tuple[float, Graph]:
    """Zero every ``every``-th unit of every exact group, remove them; max |output change|."""
    graph = build_graph(model, inputs)
    drop = {g.id: torch.arange(0, g.size, every) for g in graph.groups()}
    zero_units_(model, graph, drop)
    before = forward(model, inputs)
    keep = {g.id: torch.tensor([i for i in range(g.size) if i % every]) for g in graph.groups()}
    remove_units_(model, inputs, graph, keep)
    after = forward(model, inputs)
    assert [a.shape for a in after] == [b.shape for b in before]
    err = max(float((a - b).abs().max()) for a, b in zip(after, before) if a.is_floating_point())
    return err, graph
