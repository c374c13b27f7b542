"""Weight criteria: ``score(weight, stats) -> Tensor`` shaped like ``weight``; higher = matters more.

``stats`` is a dict of what a criterion needs besides the weight: ``grad`` (mean gradient over a few
batches), ``generator`` (a seeded ``torch.Generator`` for random scores), ``movement`` (accumulated
``-w * g`` during training), ``act_norm`` (per-input-feature activation norms).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .registry import SCORES

Stats = dict[str, Any]


def _need(stats: Stats | None, key: str, criterion: str) -> Tensor:
    if not stats or stats.get(key) is None:
        raise ValueError(f"score {criterion!r} needs stats[{key!r}] (pass data so it can be computed)")
    return stats[key]


@SCORES.register("magnitude")
def magnitude(weight: Tensor, stats: Stats | None = None) -> Tensor:
    """|W|: magnitude pruning (Han et al. 2015, "Learning both Weights and Connections")."""
    return weight.detach().abs()


@SCORES.register("random")
def random(weight: Tensor, stats: Stats | None = None) -> Tensor:
    """Uniform random scores from ``stats['generator']`` (seeded), the baseline of Liu et al. 2022."""
    gen = (stats or {}).get("generator")
    if gen is None:
        gen = torch.Generator().manual_seed(0)
    return torch.rand(weight.shape, generator=gen).to(weight.device)


@SCORES.register("taylor")
def taylor(weight: Tensor, stats: Stats | None = None) -> Tensor:
    """|W * dL/dW|: first-order Taylor estimate of the loss change (Molchanov et al. 2019, eq. 3)."""
    g = _need(stats, "grad", "taylor")
    return (weight.detach() * g).abs()


@SCORES.register("movement")
def movement(weight: Tensor, stats: Stats | None = None) -> Tensor:
    """-sum_t W * dL/dW over training: movement pruning (Sanh et al. 2020, eq. 5)."""
    return _need(stats, "movement", "movement").clone()


@SCORES.register("lamp")
def lamp(weight: Tensor, stats: Stats | None = None) -> Tensor:
    """LAMP: w_u^2 / sum_{v >= u} w_v^2 over the layer's weights sorted by magnitude (Lee et al. 2021, eq. 2)."""
    w2 = weight.detach().float().reshape(-1).pow(2)
    order = torch.argsort(w2)  # ascending
    sorted_w2 = w2[order]
    tail = sorted_w2.flip(0).cumsum(0).flip(0)  # sum_{v >= u}
    out = torch.empty_like(w2)
    out[order] = sorted_w2 / tail.clamp_min(torch.finfo(tail.dtype).tiny)
    return out.reshape(weight.shape)


def get_score(name: str):
    """The registered criterion ``name`` (error lists the accepted names)."""
    return SCORES.get(name)


# Pruning-at-initialization criteria; their statistics come from ``prunekit.training.pai``.


@SCORES.register("snip")
def snip(weight: Tensor, stats: Stats | None = None) -> Tensor:
    """|W * dL/dW| at initialization: SNIP connection sensitivity (Lee et al. 2019, "SNIP", s_j before normalizing)."""
    g = _need(stats, "grad", "snip")
    return (weight.detach() * g).abs()


@SCORES.register("grasp")
def grasp(weight: Tensor, stats: Stats | None = None) -> Tensor:
    """W * Hg: minus GraSP's S(-W) = -W * Hg (Wang et al. 2020, "GraSP"), which prunes the highest S."""
    hg = _need(stats, "hg", "grasp")
    return weight.detach() * hg


@SCORES.register("synflow")
def synflow(weight: Tensor, stats: Stats | None = None) -> Tensor:
    """|W * dR/dW| with R = 1^T (prod_l |W_l|) 1: synaptic saliency (Tanaka et al. 2020, "SynFlow")."""
    dr = _need(stats, "synflow_grad", "synflow")
    return (weight.detach() * dr).abs()
