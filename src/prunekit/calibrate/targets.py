"""What the calibration engine prunes inside a transformer block: Linear layers and fused MoE expert matrices.

A *target* is one ``(out, in)`` weight matrix solved on its own: a Linear (or GPT-2 ``Conv1D``) weight,
or one expert's matrix of a fused 3-D expert parameter (transformers 5.x stores Mixtral / Qwen-MoE
experts as ``gate_up_proj`` (E, 2I, H) and ``down_proj`` (E, H, I), ``(E, in, out)`` when the experts
module says ``is_transposed``). Routers and one-output gates are kept by rule.

This module is the calibrate engine's own walker; it can later defer to ``prunekit.layers.classify``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .blocks import is_linear, mask_to_param, set_weight_2d, weight_2d

EXPERT_PARAMS = ("gate_up_proj", "up_proj", "down_proj")
ROUTER_NAMES = ("gate", "router")


@dataclass
class LinearTarget:
    """A Linear (or ``Conv1D``) layer; its parameter is ``<name>.weight``."""

    module: nn.Module

    @property
    def param(self) -> str:
        return "weight"

    def weight(self) -> Tensor:
        return weight_2d(self.module)  # (out, in)

    def set(self, W: Tensor) -> None:
        set_weight_2d(self.module, W)

    def param_mask(self, mask: Tensor) -> Tensor:
        return mask_to_param(self.module, mask)


@dataclass
class ExpertTarget:
    """Expert ``expert``'s matrix of the fused 3-D parameter ``attr`` of an experts module."""

    module: nn.Module
    attr: str
    expert: int

    @property
    def param(self) -> str:
        return self.attr

    @property
    def transposed(self) -> bool:
        return bool(getattr(self.module, "is_transposed", False))

    def weight(self) -> Tensor:
        w = getattr(self.module, self.attr).detach()[self.expert]
        return w.t() if self.transposed else w  # (out, in)

    def set(self, W: Tensor) -> None:
        p = getattr(self.module, self.attr)
        with torch.no_grad():
            p[self.expert].copy_((W.t() if self.transposed else W).to(p.dtype))


Target = LinearTarget | ExpertTarget


def fused_expert_params(mod: nn.Module) -> list[str]:
    """Names of the fused 3-D expert parameters of ``mod`` (empty when it is not a fused experts module)."""
    E = getattr(mod, "num_experts", None)
    return [n for n, p in mod.named_parameters(recurse=False)
            if p.dim() == 3 and p.is_floating_point() and isinstance(E, int) and p.shape[0] == E]


def _excluded(name: str, exclude: list[str] | tuple[str, ...]) -> bool:
    return any(name == e or name.endswith("." + e) for e in exclude)


def _router_reason(block: nn.Module, name: str, mod: nn.Module) -> str | None:
    """``router`` for an MoE block's gate / router Linear, ``one-output gate`` for a Linear with one output."""
    parent = block.get_submodule(name.rpartition(".")[0]) if "." in name else block
    if name.rpartition(".")[2] in ROUTER_NAMES and hasattr(parent, "experts"):
        return "router"
    if weight_2d(mod).shape[0] == 1:
        return "one-output gate"
    return None


def block_targets(block: nn.Module, exclude: list[str] | tuple[str, ...] = ()
                  ) -> tuple[dict[str, Target], dict[str, str]]:
    """``({target name: target}, {relative parameter name: reason kept})`` of one block.

    Linear targets are named by their module (``self_attn.q_proj``), expert targets
    ``<experts module>.<param>.<expert>`` (``mlp.experts.gate_up_proj.3``).
    """
    targets: dict[str, Target] = {}
    kept: dict[str, str] = {}
    for name, mod in block.named_modules():
        if is_linear(mod):
            reason = "excluded" if _excluded(name, exclude) else _router_reason(block, name, mod)
            if reason:
                kept[f"{name}.weight"] = reason
            else:
                targets[name] = LinearTarget(mod)
            continue
        for attr in fused_expert_params(mod):
            full = f"{name}.{attr}" if name else attr
            if _excluded(full, exclude) or _excluded(name, exclude):
                kept[full] = "excluded"
                continue
            if attr not in EXPERT_PARAMS:
                raise ValueError(f"fused expert parameter {full} has a layout the calibration engine does not know "
                                 f"(known: {', '.join(EXPERT_PARAMS)}); skip it with exclude=[{full!r}]")
            for e in range(getattr(mod, attr).shape[0]):
                targets[f"{full}.{e}"] = ExpertTarget(mod, attr, e)
    return targets, kept


def param_name(target_name: str, t: Target) -> str:
    """The relative parameter name a target lives in (``q_proj.weight``, ``mlp.experts.down_proj``)."""
    return f"{target_name}.weight" if isinstance(t, LinearTarget) else target_name.rsplit(".", 1)[0]


def is_moe_block(mod: nn.Module) -> bool:
    """An MoE block: has an ``experts`` child (fused or a list of expert MLPs)."""
    return isinstance(getattr(mod, "experts", None), nn.Module)


def expert_groups(targets: dict[str, Target]) -> dict[str, list[str]]:
    """``{parameter name: [target names]}`` of the fused expert targets, experts in order."""
    out: dict[str, list[str]] = {}
    for n, t in targets.items():
        if isinstance(t, ExpertTarget):
            out.setdefault(param_name(n, t), []).append(n)
    return out


def describe(targets: dict[str, Any]) -> str:
    return ", ".join(list(targets)[:5]) + (" ..." if len(targets) > 5 else "")


def _kept_reason(model: nn.Module, name: str, p: Tensor, inside: dict[str, str], block_params: set[str]) -> str:
    mod = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    if not p.is_floating_point():
        return "not-floating"
    if p.dim() < 2:
        return "rank<2 (bias, norm, scale)"
    if name in inside:
        return inside[name]
    if isinstance(mod, nn.Embedding):
        return "embedding"
    if name.rpartition(".")[0].rpartition(".")[2] in ROUTER_NAMES:
        return "router"
    return "not a block weight (embeddings, norms, heads)" if name not in block_params else "not a Linear/expert weight"


def ledger(model: nn.Module, stacks: list[Any], exclude: list[str], masks: dict[str, Any]) -> dict[str, Any]:
    """Every parameter of ``model``: pruned (named in ``masks``) or kept with the rule that kept it; sparsities.

    ``sparsity_pruned_weights`` counts zeros over the pruned tensors, ``sparsity_all_weights`` over every
    floating tensor of rank >= 2, ``sparsity_all_parameters`` over every parameter (biases and norms too).
    """
    inside: dict[str, str] = {}
    block_params: set[str] = set()
    for st in stacks:
        for i, block in enumerate(st.blocks):
            _, kept = block_targets(block, exclude)
            inside.update({f"{st.prefix}.{i}.{k}": v for k, v in kept.items()})
            block_params.update(f"{st.prefix}.{i}.{n}" for n, _ in block.named_parameters())
    kept_by: dict[str, str] = {}
    z = {"pruned": [0, 0], "weights": [0, 0], "all": [0, 0]}
    for name, p in model.named_parameters():  # tied parameters once
        zeros, n = int((p.detach() == 0).sum()), p.numel()
        groups = ["all"] + (["weights"] if p.dim() >= 2 and p.is_floating_point() else [])
        if name in masks:
            groups.append("pruned")
        else:
            kept_by[name] = _kept_reason(model, name, p, inside, block_params)
        for g in groups:
            z[g][0] += zeros
            z[g][1] += n
    reasons: dict[str, int] = {}
    for r in kept_by.values():
        reasons[r] = reasons.get(r, 0) + 1
    frac = {k: v[0] / v[1] if v[1] else 0.0 for k, v in z.items()}
    return {"pruned": sorted(masks), "kept": kept_by, "kept_counts": reasons,
            "sparsity_pruned_weights": frac["pruned"], "sparsity_all_weights": frac["weights"],
            "sparsity_all_parameters": frac["all"],
            "labels": {"sparsity_pruned_weights": "zeros / entries of the pruned tensors",
                       "sparsity_all_weights": "zeros / entries of every floating tensor of rank >= 2",
                       "sparsity_all_parameters": "zeros / entries of every parameter, biases and norms included"}}
