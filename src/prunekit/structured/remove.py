"""Physical removal: shrink every coupled tensor, then the module attributes that describe widths."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from .graph import Graph
from .trace import TraceError, call_model, output_tensors

log = logging.getLogger(__name__)


class Undo:
    """A journal of dict writes (parameters, buffers, attributes, submodules) that can be rolled back."""

    def __init__(self) -> None:
        self._log: list[tuple[dict, str, Any, bool]] = []

    def set(self, d: dict, key: str, value: Any) -> None:
        """``d[key] = value``, remembering what was there."""
        self._log.append((d, key, d.get(key), key in d))
        d[key] = value

    def set_attr(self, obj: Any, name: str, value: Any) -> None:
        """``setattr`` for plain attributes and for config objects, remembered."""
        if isinstance(obj, nn.Module) or hasattr(obj, "__dict__"):
            self.set(obj.__dict__, name, value)
        else:
            setattr(obj, name, value)

    def rollback(self) -> None:
        """Restore everything written, newest first."""
        for d, key, old, existed in reversed(self._log):
            if existed:
                d[key] = old
            else:
                d.pop(key, None)
        self._log.clear()


def owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding state tensor ``name`` and the tensor's attribute name in it."""
    path, _, attr = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attr


def replace_tensor(model: nn.Module, names: list[str], new: Tensor, undo: Undo) -> None:
    """Put ``new`` in place of the tensor called ``names`` (all aliases of one tied tensor)."""
    m0, a0 = owner(model, names[0])
    old = m0._parameters.get(a0) if a0 in m0._parameters else m0._buffers.get(a0)
    if isinstance(old, nn.Parameter):
        value: Tensor = nn.Parameter(new.contiguous(), requires_grad=old.requires_grad)
    else:
        value = new.contiguous()
    for n in names:
        m, a = owner(model, n)
        undo.set(m._parameters if a in m._parameters else m._buffers, a, value)


def named_state(model: nn.Module) -> dict[str, Tensor]:
    """Every parameter and buffer by every name, non-persistent buffers included (they shrink too)."""
    return {n: t for n, t in [*model.named_parameters(remove_duplicate=False),
                              *model.named_buffers(remove_duplicate=False)] if t is not None}


def shrink_tensors_(model: nn.Module, graph: Graph, keep: dict[int, Tensor], undo: Undo) -> dict[str, dict]:
    """Index-select every state tensor along the dims that contain a shrinking group.

    Returns ``{name: {dim: kept positions}}`` for the plan.
    """
    state = named_state(model)
    out: dict[str, dict] = {}
    for name, lay in graph.expanded.items():
        pos = {d: graph.A.kept_positions(node, keep) for d, node in enumerate(lay)
               if set(graph.A.leaves(node)) & keep.keys()}
        if not pos:
            continue
        x = state[name].detach()
        for d, p in pos.items():
            x = x.index_select(d, p.to(x.device))
        replace_tensor(model, graph.tr.aliases[name], x.clone(), undo)
        out[name] = {str(d): p.tolist() for d, p in pos.items()}
    return out


def sync_modules_(model: nn.Module, graph: Graph, counts: dict[int, int], undo: Undo) -> dict[str, dict]:
    """Update width attributes: int attributes that sized a reshape, then known module types."""
    changed: dict[str, dict] = {}
    elements: dict[tuple[str, str], dict[int, int]] = {}  # tuple/list attribute -> {index: new value}
    for (path, attr), nodes in graph.tr.attr_uses.items():
        new = {graph.A.new_size(n, counts) for n in nodes if graph.A.new_size(n, counts) != graph.A.nsize(n)}
        if len(new) > 1:
            log.warning("attribute %s.%s sized dims that shrink differently (%s); left as is", path, attr, new)
        elif new and "[" in attr:
            name, _, i = attr.partition("[")
            elements.setdefault((path, name), {})[int(i.rstrip("]"))] = new.pop()
        elif new:
            _set(model, path, attr, new.pop(), undo, changed)
    for (path, name), vals in elements.items():
        old = getattr(model.get_submodule(path) if path else model, name)
        _set(model, path, name, type(old)(vals.get(i, v) for i, v in enumerate(old)), undo, changed)
    for path, m in model.named_modules():
        for attr, value in _module_widths(path, m, graph, counts).items():
            if getattr(m, attr, None) != value:
                _set(model, path, attr, value, undo, changed)
    return changed


def _set(model: nn.Module, path: str, attr: str, value: Any, undo: Undo, changed: dict) -> None:
    m = model.get_submodule(path) if path else model
    undo.set_attr(m, attr, value)
    changed.setdefault(path, {})[attr] = list(value) if isinstance(value, tuple) else value


def _module_widths(path: str, m: nn.Module, graph: Graph, counts: dict[int, int]) -> dict[str, Any]:
    """The width hyperparameters of a known module type, read from its (shrunk) tensors."""
    rec = graph.tr.module_attrs
    w = m.__dict__.get("_parameters", {}).get("weight")
    if isinstance(m, nn.Linear):
        return {"in_features": w.shape[1], "out_features": w.shape[0]}
    if isinstance(m, nn.modules.conv._ConvNd):
        g = graph.A.new_size(rec[(path, "groups")], counts) if (path, "groups") in rec else m.groups
        if m.transposed:
            return {"groups": g, "in_channels": w.shape[0], "out_channels": w.shape[1] * g}
        return {"groups": g, "in_channels": w.shape[1] * g, "out_channels": w.shape[0]}
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        ref = w if w is not None else m.running_mean
        return {"num_features": ref.shape[0]} if ref is not None else {}
    if isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
        if (path, "normalized_shape") in rec:
            return {"normalized_shape": tuple(graph.A.new_size(n, counts) for n in rec[(path, "normalized_shape")])}
        return {"normalized_shape": tuple(w.shape)} if w is not None else {}
    if isinstance(m, nn.GroupNorm):
        g = graph.A.new_size(rec[(path, "num_groups")], counts) if (path, "num_groups") in rec else m.num_groups
        return {"num_groups": g, "num_channels": w.shape[0] if w is not None else m.num_channels}
    if isinstance(m, nn.Embedding):
        return {"num_embeddings": w.shape[0], "embedding_dim": w.shape[1]}
    if isinstance(m, nn.PReLU):
        return {"num_parameters": w.shape[0]}
    if type(m).__name__ == "Conv1D" and hasattr(m, "nf") and w is not None:  # Hugging Face GPT-2
        return {"nf": w.shape[1], "nx": w.shape[0]} if hasattr(m, "nx") else {"nf": w.shape[1]}
    return {}


def output_shapes(model: nn.Module, example_inputs: Any) -> list[tuple[int, ...]]:
    """Shapes of the tensors a forward pass returns (eval mode, no grad)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return [tuple(o.shape) for o in output_tensors(call_model(model, example_inputs))]
    finally:
        model.train(was)


def _pop(stack: list[str]) -> None:
    if stack:
        stack.pop()


def verify(model: nn.Module, example_inputs: Any, expected: list[tuple[int, ...]]) -> None:
    """Run the slimmer model once; raise :class:`TraceError` naming the failing module or shape."""
    stack: list[str] = []
    hooks = []
    for p, m in model.named_modules():
        hooks.append(m.register_forward_pre_hook(lambda _m, _a, p=p: stack.append(p)))
        hooks.append(m.register_forward_hook(lambda _m, _a, _o: _pop(stack)))
    try:
        got = output_shapes(model, example_inputs)
    except Exception as e:
        where = stack[-1] if stack and stack[-1] else "the top-level model"
        raise TraceError(f"the pruned model fails in module {where!r}: {type(e).__name__}: {e}; its forward "
                         f"probably uses a width prunekit could not see; add {where!r} to ignore=[...]") from e
    finally:
        for h in hooks:
            h.remove()
    if got != expected:
        raise TraceError(f"output shapes changed from {expected} to {got}; this is a prunekit bug")
