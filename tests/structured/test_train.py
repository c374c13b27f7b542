"""Training for structure: BN slimming and the pruning-aware regularizer drive chosen units to zero."""

import torch
from torch import nn

from prunekit.structured import Structured
from prunekit.structured.regularize import BNSlimming, PruningAwareRegularizer
from prunekit.training import fit


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 3))


def _data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 6, 6, generator=g)
    return x, (x.mean((1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 1).long()


def test_bn_slimming_shrinks_bn_scales():
    x, y = _data()
    m0, m1 = _net(), _net()
    fit(m0, (x, y), steps=30, batch_size=16, lr=0.05, weight_decay=0.0)
    fit(m1, (x, y), steps=30, batch_size=16, lr=0.05, weight_decay=0.0, callbacks=[BNSlimming(lam=0.05)])
    assert m1[1].weight.abs().sum() < 0.8 * m0[1].weight.abs().sum()


def test_pruning_aware_penalty_only_on_chosen_units_then_removes_them():
    x, y = _data()
    m = _net()
    reg = PruningAwareRegularizer(m, x[:4], Structured(sparsity=0.5), lam=0.5, mode="group")
    (gid, kept), = reg.keep.items()
    removed = sorted(set(range(8)) - set(kept.tolist()))
    norm = lambda: m[0].weight.detach()[removed].norm()  # noqa: E731
    kept_norm = lambda: m[0].weight.detach()[kept].norm()  # noqa: E731
    r0, k0 = float(norm()), float(kept_norm())
    fit(m, (x, y), steps=40, batch_size=16, lr=0.05, weight_decay=0.0, callbacks=[reg])
    assert float(norm()) < 0.5 * r0 and float(kept_norm()) > 0.5 * k0
    plan = reg.remove_(m)
    assert m[0].out_channels == 4 and m[5].in_features == 4 and plan.tensors


def test_pruning_aware_bn_mode_penalizes_bn_scales_of_chosen_units():
    x, y = _data()
    m = _net()
    reg = PruningAwareRegularizer(m, x[:4], Structured(sparsity=0.5, importance="random"), lam=0.05, mode="bn")
    (_, kept), = reg.keep.items()
    removed = sorted(set(range(8)) - set(kept.tolist()))
    fit(m, (x, y), steps=40, batch_size=16, lr=0.05, weight_decay=0.0, callbacks=[reg])
    assert m[1].weight.detach()[removed].abs().mean() < m[1].weight.detach()[kept].abs().mean()
