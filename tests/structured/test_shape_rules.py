"""Shape rules learned from the traced tensors, each checked exact (zeroed units removed: same outputs).

In-code stand-ins of timm patterns: CaiT/XCiT attention that computes its head size from its input, FocalNet's
split by the input's width, InceptionNeXt's split-size tuple attribute, TResNet's non-persistent channel buffer,
and a Swin-style relative-position table.
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.structured import Structured, apply_plan_, build_graph, remove_

from ._util import forward, removal_error


class _InputWidthAttention(nn.Module):
    """CaiT / XCiT style: ``C // self.num_heads`` and ``reshape(B, N, C)`` read the input's width."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.num_heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        a = torch.softmax(qkv[0] @ qkv[1].transpose(-2, -1), -1) @ qkv[2]
        return self.proj(a.transpose(1, 2).reshape(B, N, C))


class _TokenNet(nn.Module):
    def __init__(self, attn: nn.Module, dim: int = 16) -> None:
        super().__init__()
        self.stem = nn.Linear(6, dim)
        self.attn = attn
        self.fc1, self.fc2 = nn.Linear(dim, 32), nn.Linear(32, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.attn(x)
        x = x + self.fc2(F.gelu(self.fc1(x)))
        return self.head(x.mean(1))


def test_head_size_computed_from_the_input_keeps_heads_and_width_whole_and_says_so():
    torch.manual_seed(0)
    m, x = _TokenNet(_InputWidthAttention()), torch.randn(2, 5, 6)
    g = build_graph(m, x)
    sizes = {gr.size for gr in g.groups()}
    assert sizes == {32}  # only the MLP hidden width: heads (4) and the residual (16) stay whole
    why = [w for gr, w in g.fixed_groups if any(mb.name == "attn.proj.weight" for mb in gr.members)]
    assert any(w.startswith("reshape in attn sizes a dim by") and "kept whole" in w for w in why)
    err, _ = removal_error(m, x)
    assert err < 1e-5
    m = _TokenNet(_InputWidthAttention())
    remove_(m, x, Structured(sparsity=0.5))
    assert m.attn.qkv.out_features == 48 and m.fc1.out_features == 16 and forward(m, x)[0].shape == (2, 3)


class _ComputedHeadSize(_InputWidthAttention):
    """Only the head size is computed (``C // self.num_heads``); the output reshape uses -1."""

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        a = torch.softmax(qkv[0] @ qkv[1].transpose(-2, -1), -1) @ qkv[2]
        return self.proj(a.transpose(1, 2).reshape(B, N, -1))


def test_computed_head_size_keeps_heads_whole_naming_the_attribute():
    torch.manual_seed(0)
    m, x = _TokenNet(_ComputedHeadSize()), torch.randn(2, 5, 6)
    g = build_graph(m, x)
    assert not [gr for gr in g.groups() if gr.kind == "head"]
    why = [w for gr, w in g.fixed_groups if gr.size == 4 and any(mb.name == "attn.proj.weight" for mb in gr.members)]
    assert any("computed in forward from attn.num_heads and an input's width" in w for w in why)
    err, _ = removal_error(m, x)
    assert err < 1e-5


class _FixedHeadAttention(_InputWidthAttention):
    """timm ViT style: ``self.head_dim`` and ``self.num_heads`` size the reshapes: heads are removable."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__(dim, heads)
        self.head_dim = dim // heads

    def forward(self, x):
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        a = torch.softmax(qkv[0] @ qkv[1].transpose(-2, -1), -1) @ qkv[2]
        return self.proj(a.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim))


def test_head_count_times_head_size_follows_a_head_removal():
    torch.manual_seed(0)
    m, x = _TokenNet(_FixedHeadAttention()), torch.randn(2, 5, 6)
    g = build_graph(m, x)
    assert [gr.size for gr in g.groups() if gr.kind == "head"] == [4]
    err, _ = removal_error(m, x)  # every 2nd head zeroed and removed
    assert err < 1e-5 and m.attn.num_heads == 2 and m.attn.qkv.out_features == 24


class _FocalSplit(nn.Module):
    """FocalNet style: ``torch.split(f(x), (C, C, gates), 1)`` with ``C = x.shape[1]``."""

    def __init__(self, c: int = 8, levels: int = 2) -> None:
        super().__init__()
        self.focal_level = levels
        self.f = nn.Conv2d(c, 2 * c + levels + 1, 1)
        self.ctx = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.h = nn.Conv2d(c, c, 1)

    def forward(self, x):
        C = x.shape[1]
        q, ctx, gates = torch.split(self.f(x), (C, C, self.focal_level + 1), 1)
        ctx = self.ctx(ctx) * gates[:, :1]
        return q * self.h(ctx)


class _ConvNet(nn.Module):
    def __init__(self, block: nn.Module, c: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.block = block
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.block(x)
        return self.head(x.mean((2, 3)))


def test_split_by_the_input_width_couples_the_parts_with_that_width():
    torch.manual_seed(0)
    m, x = _ConvNet(_FocalSplit()), torch.randn(2, 3, 6, 6)
    g = build_graph(m, x)
    stem = [gr for gr in g.groups() if any(mb.name == "stem.weight" for mb in gr.members)]
    assert len(stem) == 1 and stem[0].size == 8
    assert {mb.name for mb in stem[0].members} >= {"block.f.weight", "block.ctx.weight", "block.h.weight"}
    err, _ = removal_error(m, x)
    assert err < 1e-5 and m.block.f.out_channels == 2 * 4 + 3


class _InceptionSplit(nn.Module):
    """InceptionNeXt style: ``torch.split(x, self.split_indexes, 1)`` with a tuple attribute."""

    def __init__(self, c: int = 12, gc: int = 2) -> None:
        super().__init__()
        self.split_indexes = (c - 3 * gc, gc, gc, gc)
        self.hw = nn.Conv2d(gc, gc, 3, padding=1, groups=gc)
        self.w = nn.Conv2d(gc, gc, (1, 3), padding=(0, 1), groups=gc)
        self.h = nn.Conv2d(gc, gc, (3, 1), padding=(1, 0), groups=gc)

    def forward(self, x):
        x_id, x_hw, x_w, x_h = torch.split(x, self.split_indexes, dim=1)
        return torch.cat((x_id, self.hw(x_hw), self.w(x_w), self.h(x_h)), dim=1)


def test_split_size_tuple_attribute_is_rewritten():
    torch.manual_seed(0)
    m, x = _ConvNet(_InceptionSplit(), c=12), torch.randn(2, 3, 6, 6)
    dense = copy.deepcopy(m)
    err, _ = removal_error(m, x)
    assert err < 1e-5
    assert m.block.split_indexes == (3, 1, 1, 1) and isinstance(m.block.split_indexes, tuple)
    plan = remove_(dense, x, Structured(sparsity=0.5))
    assert plan.attributes["block"]["split_indexes"] == list(dense.block.split_indexes)
    assert sum(dense.block.split_indexes) == dense.stem.out_channels


class _AntiAlias(nn.Module):
    """TResNet style: a blur whose per-channel filter is a non-persistent buffer, ``groups=x.shape[1]``."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.register_buffer("filt", torch.ones(c, 1, 3, 3) / 9, persistent=False)
        self.conv = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return self.conv(F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.filt, groups=x.shape[1]))


def test_non_persistent_channel_buffer_shrinks_with_its_channels():
    torch.manual_seed(0)
    m, x = _ConvNet(_AntiAlias()), torch.randn(2, 3, 6, 6)
    fresh = copy.deepcopy(m)
    err, _ = removal_error(m, x)
    assert err < 1e-5 and m.block.filt.shape == (4, 1, 3, 3)
    plan = remove_(copy.deepcopy(fresh), x, Structured(sparsity=0.5))
    assert "block.filt" in plan.tensors
    apply_plan_(fresh, plan)  # the replay shrinks the buffer too
    assert fresh.block.filt.shape == (4, 1, 3, 3) and forward(fresh, x)[0].shape == (2, 3)


class _RelPosAttention(_FixedHeadAttention):
    """Swin style: a learned ``(positions, heads)`` table indexed by a buffer, added to the logits."""

    def __init__(self, dim: int = 16, heads: int = 4, n: int = 5) -> None:
        super().__init__(dim, heads)
        self.relative_position_bias_table = nn.Parameter(torch.randn(2 * n - 1, heads))
        i = torch.arange(n)
        self.register_buffer("relative_position_index", (i[:, None] - i[None, :] + n - 1).flatten())

    def forward(self, x):
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index].view(N, N, -1).permute(2, 0, 1)
        a = torch.softmax(qkv[0] @ qkv[1].transpose(-2, -1) + bias.unsqueeze(0), -1) @ qkv[2]
        return self.proj(a.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim))


def test_relative_position_table_follows_its_heads():
    torch.manual_seed(0)
    m, x = _TokenNet(_RelPosAttention()), torch.randn(2, 5, 6)
    g = build_graph(m, x)
    heads = [gr for gr in g.groups() if gr.kind == "head"]
    assert len(heads) == 1 and "attn.relative_position_bias_table" in {mb.name for mb in heads[0].members}
    err, _ = removal_error(m, x)
    assert err < 1e-5 and m.attn.relative_position_bias_table.shape == (9, 2) and m.attn.num_heads == 2


class _ChunkBranches(nn.Module):
    """EfficientViT-MSRA / ShuffleNetV2 style: ``x.chunk(n, 1)`` recomputes equal parts from the width."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(c // 2, c // 2, 1), nn.Conv2d(c // 2, c // 2, 1)

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        return torch.cat((self.a(x1), self.b(x2 + x1)), dim=1)


class _ConstSplit(_ChunkBranches):
    def forward(self, x):
        x1, x2 = x.split(4, dim=1)  # a literal size: it cannot follow a removal
        return torch.cat((self.a(x1), self.b(x2)), dim=1)


def test_chunk_parts_shrink_alike_and_constant_split_sizes_stay_whole():
    torch.manual_seed(0)
    m, x = _ConvNet(_ChunkBranches()), torch.randn(2, 3, 6, 6)
    err, g = removal_error(m, x)
    assert err < 1e-5 and m.stem.out_channels == 4 and m.block.a.in_channels == m.block.b.in_channels == 2
    m = _ConvNet(_ConstSplit())
    g = build_graph(m, x)
    assert not [gr for gr in g.groups() if any(mb.name == "stem.weight" for mb in gr.members)]
    assert any("would not follow a removal" in w for gr, w in g.fixed_groups
               if any(mb.name == "stem.weight" for mb in gr.members))
