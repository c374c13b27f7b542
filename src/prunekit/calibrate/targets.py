"""What the calibration engine prunes inside a transformer block: Linear layers and fused MoE expert matrices.

A *target* is one ``(out, in)`` weight matrix solved on its own: a Linear (or GPT-2 ``Conv1D``) weight,
or one expert's matrix of a fused 3-D expert parameter (transformers 5.x stores Mixtral / Qwen-MoE
experts as ``gate_up_proj`` (E, 2I, H) and ``down_proj`` (E, H, I), ``(E, in, out)`` when the experts
module says ``is_transposed``). Which tensors are weights, and which are kept by which rule (routers,
one-output gates, embeddings, norms, ``exclude``), is ``prunekit.layers.classify``'s answer; this module
turns it into targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..layers import Ledger, classify
from .blocks import mask_to_param, set_weight_2d, weight_2d

EXPERT_PARAMS = ("gate_up_proj", "up_proj", "down_proj")  # fused layouts whose routed inputs experts.py replays
CALIBRATED_KINDS = ("linear", "conv1d-gpt2", "experts")


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


def calibration_ledger(model: nn.Module, stacks: list[Any], exclude: list[str] | tuple[str, ...]) -> Ledger:
    """``prunekit.layers.classify`` of ``model``, with the prunable tensors outside the block stacks kept as
    ``head`` (pooler, classifier, heads: the calibration engine prunes inside transformer blocks only).

    A block weight of a kind the engine cannot calibrate (``nn.MultiheadAttention``, RNN, conv) is an
    error naming it and the ``exclude`` entry that keeps it.
    """
    led = classify(model, exclude)
    inside = tuple(f"{s.prefix}." for s in stacks)
    for name in list(led.prunable):
        if not name.startswith(inside):
            del led.prunable[name]
            led.kept[name] = "head"
    bad = [n for n, w in led.prunable.items() if w.kind not in CALIBRATED_KINDS or
           (w.kind == "experts" and w.attr not in EXPERT_PARAMS)]
    if bad:
        raise ValueError(f"the calibration engine prunes Linear layers and fused experts ({', '.join(EXPERT_PARAMS)}) "
                         f"of transformer blocks; it cannot calibrate {bad[:5]} "
                         f"({', '.join(sorted({led.prunable[n].kind for n in bad}))}): keep them with exclude={bad!r}")
    return led


def block_targets(ledger: Ledger, prefix: str, block: nn.Module) -> dict[str, Target]:
    """``{target name: target}`` of the block at ``prefix`` (e.g. ``model.layers.3``).

    Linear targets are named by their module relative to the block (``self_attn.q_proj``), expert
    targets ``<experts module>.<param>.<expert>`` (``mlp.experts.gate_up_proj.3``).
    """
    targets: dict[str, Target] = {}
    start = prefix + "."
    for name, w in ledger.prunable.items():
        if not name.startswith(start):
            continue
        rel = w.module[len(start):]
        mod = block.get_submodule(rel)
        if w.kind == "experts":
            for e in range(w.shape[0]):
                targets[f"{rel}.{w.attr}.{e}"] = ExpertTarget(mod, w.attr, e)
        else:
            targets[rel] = LinearTarget(mod)
    return targets


def param_name(target_name: str, t: Target) -> str:
    """The relative parameter name a target lives in (``q_proj.weight``, ``mlp.experts.down_proj``)."""
    return f"{target_name}.weight" if isinstance(t, LinearTarget) else target_name.rsplit(".", 1)[0]


def expert_groups(targets: dict[str, Target]) -> dict[str, list[str]]:
    """``{parameter name: [target names]}`` of the fused expert targets, experts in order."""
    out: dict[str, list[str]] = {}
    for n, t in targets.items():
        if isinstance(t, ExpertTarget):
            out.setdefault(param_name(n, t), []).append(n)
    return out
