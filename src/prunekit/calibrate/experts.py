"""Per-expert calibration statistics of fused MoE experts, from the tokens the router sends to each expert.

A forward pre-hook on the experts module sees what the model passes it (transformers 5.x:
``experts(hidden_states (T, H), top_k_index (T, k), top_k_weights (T, k))``). For each expert e the
tokens routed to it are ``x_e = hidden_states[any(top_k_index == e, -1)]``, the input of its
``gate_up_proj`` (or ``up_proj``) matrix; the input of its ``down_proj`` matrix is the gated
activation of those tokens, replayed as the model computes it: ``act(x_e W_g^T) * (x_e W_u^T)``
(the module's own ``_apply_gate``), or ``act(x_e W_u^T)`` without a gate. An expert that gets no
token has empty statistics; the engine then falls back to magnitude and says so.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .stats import LayerStats
from .targets import ExpertTarget, Target


def _matrix(mod: nn.Module, attr: str, e: int) -> Tensor:
    w = getattr(mod, attr)[e]
    return w.t() if getattr(mod, "is_transposed", False) else w  # (out, in)


def _bias(mod: nn.Module, attr: str, e: int) -> Tensor | None:
    b = getattr(mod, f"{attr}_bias", None)
    return None if b is None else b[e]


def routed_inputs(mod: nn.Module, x: Tensor, top_k_index: Tensor, e: int) -> dict[str, Tensor]:
    """``{param: input rows}`` of expert ``e`` for the tokens routed to it; ``x`` is ``(T, H)``."""
    tok = (top_k_index == e).any(dim=-1).nonzero().squeeze(-1)  # (T_e,)
    xe = x[tok]  # (T_e, H)
    out = {}
    first = "gate_up_proj" if hasattr(mod, "gate_up_proj") else "up_proj"
    out[first] = xe
    if hasattr(mod, "down_proj"):
        h = nn.functional.linear(xe, _matrix(mod, first, e), _bias(mod, first, e))  # (T_e, 2I) or (T_e, I)
        gated = hasattr(mod, "gate_up_proj") and getattr(mod, "has_gate", True)
        out["down_proj"] = mod._apply_gate(h) if gated and hasattr(mod, "_apply_gate") else (
            _default_gate(mod, h) if gated else mod.act_fn(h))  # (T_e, I)
    return out


def _default_gate(mod: nn.Module, h: Tensor) -> Tensor:
    gate, up = h.chunk(2, dim=-1)
    return mod.act_fn(gate) * up


class ExpertGatherer:
    """Pre-hooks on fused experts modules that add each expert matrix's routed inputs to its ``LayerStats``."""

    def __init__(self, targets: dict[str, Target], needs: dict[str, frozenset[str]]) -> None:
        self.stats: dict[str, LayerStats] = {}
        self.names: dict[tuple[int, str, int], str] = {}
        mods: dict[int, nn.Module] = {}
        for n, t in targets.items():
            if isinstance(t, ExpertTarget):
                self.names[(id(t.module), t.attr, t.expert)] = n
                self.stats[n] = LayerStats(t.weight().shape[1], needs[n], device=t.weight().device)
                mods[id(t.module)] = t.module
        self.handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True) for m in mods.values()]

    def _hook(self, mod: nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs["hidden_states"]
        idx = args[1] if len(args) > 1 else kwargs["top_k_index"]
        x = x.reshape(-1, x.shape[-1])
        idx = idx.reshape(x.shape[0], -1)
        E = mod.num_experts
        with torch.no_grad():
            for e in range(E):
                for attr, rows in routed_inputs(mod, x, idx, e).items():
                    name = self.names.get((id(mod), attr, e))
                    if name is not None and rows.shape[0] > 0:
                        self.stats[name].add(rows)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def tokens_per_expert(stats: dict[str, LayerStats], group: list[str]) -> list[int]:
    """Calibration tokens each expert matrix of one fused parameter saw."""
    return [stats[n].n_tokens for n in group]


