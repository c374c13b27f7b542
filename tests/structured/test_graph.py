"""Coupling found by the trace on tiny in-code models, and removal of zeroed units being exact."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.structured import TraceError, build_graph

from ._util import removal_error


def _names(graph):
    return [sorted({m.name for m in g.members}) for g in graph.groups()]


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        h = F.relu(self.bn(self.a(x)))
        h = h + self.b(h)  # residual: a, bn, b's output and c's input are one space
        h = self.c(h)
        return self.fc(F.max_pool2d(h, 2).flatten(1))


def test_residual_add_couples_producers_and_flatten_reaches_linear():
    g = build_graph(Residual(), torch.randn(2, 3, 8, 8))
    names = _names(g)
    assert ["a.bias", "a.weight", "b.bias", "b.weight", "bn.bias", "bn.running_mean", "bn.running_var",
            "bn.weight", "c.weight"] in names
    assert ["c.bias", "c.weight", "fc.weight"] in names  # flatten (C,H,W) -> Linear columns
    assert g.macs() > 0 and g.params() == sum(p.numel() for p in Residual().parameters())


def test_removing_zeroed_units_is_exact_on_residual_net():
    err, _ = removal_error(Residual(), torch.randn(2, 3, 8, 8))
    assert err < 1e-5


class ConcatSplit(nn.Module):
    def __init__(self):
        super().__init__()
        self.p, self.q = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1)
        self.r = nn.Conv2d(10, 8, 1)
        self.glu = nn.Linear(8, 12)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        h = self.r(torch.cat([self.p(x), self.q(x)], 1))  # concat along channels
        h = h.mean((2, 3))
        gate, up = self.glu(h).chunk(2, -1)  # GLU: the two halves are one space
        return self.out(F.silu(gate) * up)


def test_concat_maps_each_part_and_chunk_couples_halves():
    g = build_graph(ConcatSplit(), torch.randn(2, 3, 4, 4))
    names = _names(g)
    assert ["p.bias", "p.weight", "r.weight"] in names and ["q.bias", "q.weight", "r.weight"] in names
    glu = next(gr for gr in g.groups() if any(m.name == "out.weight" for m in gr.members))
    assert glu.size == 6 and {m.name for m in glu.members} == {"glu.weight", "glu.bias", "out.weight"}
    err, _ = removal_error(ConcatSplit(), torch.randn(2, 3, 4, 4))
    assert err < 1e-5


class DepthwiseGrouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # depthwise
        self.gc = nn.Conv2d(8, 12, 1, groups=2)  # grouped: 2 groups of 4 -> 6
        self.gn = nn.GroupNorm(4, 12)
        self.head = nn.Linear(12, 2)

    def forward(self, x):
        h = self.gn(self.gc(F.relu(self.dw(self.pw(x)))))
        return self.head(h.mean((2, 3)))


def test_depthwise_and_grouped_convolutions():
    m = DepthwiseGrouped()
    g = build_graph(m, torch.randn(2, 3, 6, 6))
    dw = [gr for gr in g.groups() if any(x.name == "dw.weight" for x in gr.members)]
    # the grouped conv after it splits the 8 channels into (2 conv groups) x (4 per group)
    assert sorted(gr.size for gr in dw) == [2, 4]
    assert all({x.name for x in gr.members} >= {"pw.weight", "dw.weight", "dw.bias", "gc.weight"} for gr in dw)
    err, _ = removal_error(m, torch.randn(2, 3, 6, 6))
    assert err < 1e-5
    assert m.dw.groups == m.dw.in_channels == m.dw.out_channels == 2  # 1 conv group x 2 per group kept
    assert m.gc.groups * m.gc.weight.shape[1] == m.gc.in_channels


def test_groupnorm_removes_whole_groups_only():
    m = nn.Sequential(nn.Conv2d(3, 8, 1), nn.GroupNorm(4, 8), nn.Flatten(), nn.Linear(8 * 9, 2))
    g = build_graph(m, torch.randn(2, 3, 3, 3))
    gn = [gr for gr in g.groups(include_inexact=True) if "1.weight" in {x.name for x in gr.members}]
    assert sorted((gr.size, gr.inexact is None) for gr in gn) == [(2, False), (4, True)]
    err, _ = removal_error(m, torch.randn(2, 3, 3, 3))
    assert err < 1e-5 and (m[1].num_groups, m[1].num_channels, m[0].out_channels) == (2, 4, 4)


class Attention(nn.Module):
    """GQA: 4 query heads, 2 kv heads of 8 dims; forward reshapes with self.num_heads."""

    def __init__(self, gqa_in_sdpa: bool):
        super().__init__()
        self.num_heads, self.num_kv, self.head_dim, self.gqa = 4, 2, 8, gqa_in_sdpa
        self.q, self.k, self.v = nn.Linear(16, 32), nn.Linear(16, 16), nn.Linear(16, 16)
        self.o = nn.Linear(32, 16)
        self.norm = nn.LayerNorm(16)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, t, self.num_kv, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, t, self.num_kv, self.head_dim).transpose(1, 2)
        if self.gqa:
            h = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        else:  # repeat_kv as transformers does
            k = k[:, :, None].expand(b, self.num_kv, 2, t, self.head_dim).reshape(b, self.num_heads, t, self.head_dim)
            v = v[:, :, None].expand(b, self.num_kv, 2, t, self.head_dim).reshape(b, self.num_heads, t, self.head_dim)
            h = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, -1) @ v
        return self.norm(x + self.o(h.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)))


@pytest.mark.parametrize("gqa_in_sdpa", [True, False])
def test_gqa_heads_keep_queries_per_kv_head_and_update_num_heads(gqa_in_sdpa):
    m = Attention(gqa_in_sdpa)
    x = torch.randn(2, 5, 16)
    g = build_graph(m, x)
    heads = [gr for gr in g.groups() if gr.kind == "head"]
    assert len(heads) == 1 and heads[0].size == 2  # the kv heads; each carries 2 query heads
    assert {x.name for x in heads[0].members} == {"q.weight", "q.bias", "k.weight", "k.bias", "v.weight",
                                                  "v.bias", "o.weight"}
    assert not [gr for gr in g.groups() if "norm.weight" in {x.name for x in gr.members}]  # LayerNorm: inexact
    err, _ = removal_error(m, x)
    assert err < 1e-5
    assert (m.num_heads, m.num_kv, m.q.out_features, m.k.out_features) == (2, 1, 16, 8)


class Embed(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.fc = nn.Linear(8, 16)
        self.out = nn.Linear(16, 20)

    def forward(self, ids):
        return self.out(F.gelu(self.fc(self.emb(ids))))


def test_embedding_rows_fixed_and_embedding_dim_prunable():
    g = build_graph(Embed(), torch.randint(0, 20, (2, 7)))
    sizes = sorted(gr.size for gr in g.groups())
    assert sizes == [8, 16]
    err, _ = removal_error(Embed(), torch.randint(0, 20, (2, 7)))
    assert err < 1e-5


class Shuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1, groups=1)
        self.b = nn.Conv2d(8, 8, 1, groups=2)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = self.b(self.a(x))
        b, c, hh, ww = h.shape
        h = h.view(b, 2, c // 2, hh, ww).transpose(1, 2).reshape(b, c, hh, ww)  # channel shuffle
        return self.c(h)


def test_channel_shuffle_is_followed_exactly():
    err, g = removal_error(Shuffle(), torch.randn(2, 3, 4, 4))
    assert err < 1e-5 and g.groups()


def test_frozen_parameters_and_no_grad_still_trace():
    m = Residual()
    for p in m.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        g = build_graph(m, torch.randn(2, 3, 8, 8))
    assert len(g.groups()) == 2


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.odd = Odd()
        self.b = nn.Linear(6, 2)

    def forward(self, x):
        return self.b(self.odd(self.a(x)))


class Odd(nn.Module):
    def forward(self, x):
        return torch.fft.fft(x).real  # no coupling rule for FFT


def test_untraceable_module_is_named_with_what_to_do():
    g = build_graph(Unsupported(), torch.randn(3, 4))
    with pytest.raises(TraceError, match=r"module 'odd' runs aten\._fft.*add 'odd' to ignore"):
        g.check_barriers(False)
    g2 = build_graph(Unsupported(), torch.randn(3, 4), ignore=["odd"])
    g2.check_barriers(False)
    assert not g2.groups()  # the channels the FFT touches stay whole


def test_ignore_name_that_does_not_exist_is_an_error():
    with pytest.raises(ValueError, match="ignore: no module named 'nope'"):
        build_graph(Residual(), torch.randn(2, 3, 8, 8), ignore=["nope"])


def test_ignored_module_is_never_touched():
    m = Residual()
    g = build_graph(m, torch.randn(2, 3, 8, 8), ignore=["c"])
    assert all("c.weight" not in {x.name for x in gr.members} for gr in g.groups())


def test_failing_forward_names_the_module():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(3, 3)

        def forward(self, x):
            return self.inner(x)

    with pytest.raises(TraceError, match="inside module 'inner'"):
        build_graph(Bad(), torch.randn(2, 5))
