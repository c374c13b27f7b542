"""Never silent: a structured request that removes nothing warns, naming the groups that blocked it."""

import sys

import pytest
import torch
from torch import nn

from prunekit.structured import Structured, remove_
from prunekit.structured.trace import Tracer


class _SpatialGating(nn.Module):  # gMLP (Liu et al. 2021): u * proj(norm(v)) over tokens
    def __init__(self, hidden: int, seq: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden // 2)
        self.proj = nn.Linear(seq, seq)

    def forward(self, x):
        u, v = x.chunk(2, dim=-1)
        v = self.proj(self.norm(v).transpose(-1, -2)).transpose(-1, -2)
        return u * v


class _GmlpBlock(nn.Module):
    def __init__(self, dim: int, hidden: int, seq: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.sgu = _SpatialGating(hidden, seq)
        self.fc2 = nn.Linear(hidden // 2, dim)

    def forward(self, x):
        return x + self.fc2(self.sgu(nn.functional.gelu(self.fc1(self.norm(x)))))


class _Gmlp(nn.Module):
    """A stand-in for timm's gmlp_s16_224: every width is normalized by a LayerNorm."""

    def __init__(self, dim: int = 8, seq: int = 4) -> None:
        super().__init__()
        self.stem = nn.Linear(6, dim)
        self.blocks = nn.Sequential(*[_GmlpBlock(dim, 4 * dim, seq) for _ in range(2)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        return self.head(self.norm(self.blocks(self.stem(x))).mean(1))


class _RMSNorm2d(nn.Module):  # MobileNetV5's channel RMSNorm, written with plain ops
    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-6) * self.weight[:, None, None]


class _Mnv5(nn.Module):
    """A stand-in for timm's mobilenetv5: inverted residuals whose every conv is followed by an RMSNorm2d."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _RMSNorm2d(8))
        self.expand = nn.Sequential(nn.Conv2d(8, 16, 1), _RMSNorm2d(16), nn.GELU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), _RMSNorm2d(16))
        self.project = nn.Sequential(nn.Conv2d(16, 8, 1), _RMSNorm2d(8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.dw(self.expand(x)))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("make,x,where", [(_Gmlp, torch.randn(2, 4, 6), "layer_norm"),
                                          (_Mnv5, torch.randn(2, 3, 6, 6), "mean over this dim")])
def test_nothing_removable_is_a_warning_naming_the_blocking_groups(make, x, where, caplog):
    torch.manual_seed(0)
    m = make()
    with caplog.at_level("WARNING", logger="prunekit.structured.api"):
        plan = remove_(m, x, Structured(sparsity=0.3))
    assert plan.summary["removed_nothing"] is True
    blocked = plan.summary["blocked_groups"]
    assert blocked and all(b["size"] >= 2 and b["members"] for b in blocked)
    assert any(where in b["reason"] for b in blocked)
    assert "removed nothing" in caplog.text and "Blocking groups: group" in caplog.text
    # a MACs target that cannot be met names them too
    with pytest.raises(ValueError, match="unreachable.*largest blocked groups: group"):
        remove_(m, x, Structured(target_macs=0.5))
    # prune_normalized=True accepts the inexact removal: something goes, no warning
    plan = remove_(m, x, Structured(sparsity=0.3, prune_normalized=True))
    assert plan.summary["removed_nothing"] is False


class _Watch:
    """A meta-path finder that notes imports of ``torch._dynamo`` (it finds nothing itself)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def find_spec(self, name, path, target=None):
        if name.startswith("torch._dynamo"):
            self.seen.append(name)
        return None


def test_graph_building_does_not_import_torch_dynamo(monkeypatch):
    # PyTorch wraps a TorchDispatchMode's __torch_dispatch__ in torch._dynamo.disable unless told not to; the
    # wrapper's first call imports torch._dynamo (11-16 s on 2 cores)
    assert not hasattr(Tracer.__dict__["__torch_dispatch__"], "__wrapped__")
    if "_dynamo" in vars(torch):  # forget it for the duration, so that an import would be seen
        monkeypatch.delattr(torch, "_dynamo")
    for k in [k for k in sys.modules if k.startswith("torch._dynamo")]:
        monkeypatch.delitem(sys.modules, k)
    watch = _Watch()
    monkeypatch.setattr(sys, "meta_path", [watch, *sys.meta_path])
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    remove_(m, torch.randn(2, 4), Structured(sparsity=0.5))
    assert m[0].out_features == 4 and watch.seen == []
