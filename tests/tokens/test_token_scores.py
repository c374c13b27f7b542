"""Token scores against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from prunekit.tokens.scores import (
    attention_received,
    lowest,
    position_noise,
    select_random,
    select_tome,
    select_zero_tprune,
    weighted_pagerank,
)

# rows are queries, softmax-like (each row sums to 1); token 0 has a self-loop, so the walk is aperiodic
A4 = torch.tensor([[0.5, 0.5, 0.0, 0.0],
                   [0.5, 0.0, 0.5, 0.0],
                   [0.0, 0.0, 0.0, 1.0],
                   [1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)


def test_pagerank_steps_by_hand():
    a = A4[None, None]  # (B=1, H=1, 4, 4)
    # s1_j = sum_i A_ij / 4 ; s2_j = sum_i A_ij s1_i
    assert torch.allclose(weighted_pagerank(a, iters=1, tol=0), torch.tensor([[0.5, 0.125, 0.125, 0.25]],
                                                                             dtype=torch.float64))
    assert torch.allclose(weighted_pagerank(a, iters=2, tol=0), torch.tensor([[0.5625, 0.25, 0.0625, 0.125]],
                                                                             dtype=torch.float64))
    assert torch.allclose(attention_received(a), torch.tensor([[0.5, 0.125, 0.125, 0.25]], dtype=torch.float64))


def test_pagerank_converges_to_the_stationary_distribution():
    # pi = pi A: pi1 = pi0/2, pi2 = pi1/2, pi3 = pi2 -> (1/2, 1/4, 1/8, 1/8)
    s = weighted_pagerank(A4[None, None], iters=500, tol=1e-12)
    assert torch.allclose(s, torch.tensor([[0.5, 0.25, 0.125, 0.125]], dtype=torch.float64), atol=1e-9)


def test_pagerank_ignores_padding_and_averages_heads():
    a = torch.zeros(1, 2, 5, 5, dtype=torch.float64)
    a[0, :, :4, :4] = A4
    a[0, :, 4, :] = 0.2  # a padding query votes everywhere: it must not count
    valid = torch.tensor([[True, True, True, True, False]])
    s = weighted_pagerank(a, valid, iters=2, tol=0)
    assert torch.allclose(s, torch.tensor([[0.5625, 0.25, 0.0625, 0.125, 0.0]], dtype=torch.float64))


def test_lowest_counts_per_row():
    score = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 5.0, 4.0, 1.0]])
    cand = torch.tensor([[True, True, True, False], [True, True, True, True]])
    got = lowest(score, cand, torch.tensor([2, 1]))
    assert got.tolist() == [[False, True, True, False], [True, False, False, False]]


def _keys_and_attn(t: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(1, t, 8, generator=g)
    return keys, torch.randn(1, 2, t, t, generator=g).softmax(-1)


def test_zero_tprune_removes_only_unimportant_redundant_tokens():
    keys, attn = _keys_and_attn(8)
    keys[0, 5] = keys[0, 2] * 3  # token 5 duplicates token 2's direction
    attn[..., 5] = 1e-4  # and nobody attends to it
    attn = attn / attn.sum(-1, keepdim=True)
    valid, prot = torch.ones(1, 8, dtype=torch.bool), torch.zeros(1, 8, dtype=torch.bool)
    prot[0, 0] = True
    sel = select_zero_tprune(attn, keys, valid, prot, torch.tensor([1]))
    assert sel.keep.sum() == 7 and not sel.keep[0, 5] and int(sel.dst[0, 5]) == 2


def test_tome_merges_a_into_its_most_similar_b():
    keys, attn = _keys_and_attn(6)
    keys[0, 4] = keys[0, 1] * 2  # A token 4 (even) is the same direction as B token 1 (odd)
    valid, prot = torch.ones(1, 6, dtype=torch.bool), torch.zeros(1, 6, dtype=torch.bool)
    sel = select_tome(attn, keys, valid, prot, torch.tensor([1]))
    assert sel.merge and not sel.keep[0, 4] and int(sel.dst[0, 4]) == 1 and sel.keep.sum() == 5


@pytest.mark.parametrize("n", [0, 3])
def test_tome_never_merges_protected_or_b_tokens(n):
    keys, attn = _keys_and_attn(8)
    valid, prot = torch.ones(1, 8, dtype=torch.bool), torch.zeros(1, 8, dtype=torch.bool)
    prot[0, 0] = True
    sel = select_tome(attn, keys, valid, prot, torch.tensor([n]))
    removed = (~sel.keep[0]).nonzero().flatten().tolist()
    assert len(removed) == n and all(i % 2 == 0 and i != 0 for i in removed)


@pytest.mark.parametrize("r", [1, 3, 5, 7])
def test_zero_tprune_removes_exactly_r(r):
    keys, attn = _keys_and_attn(10)
    valid, prot = torch.ones(1, 10, dtype=torch.bool), torch.zeros(1, 10, dtype=torch.bool)
    prot[0, 0] = prot[0, 9] = True  # 8 candidates: sources min(2r, 8 - r), at least r
    sel = select_zero_tprune(attn, keys, valid, prot, torch.tensor([r]))
    assert int((~sel.keep).sum()) == r and sel.keep[0, 0] and sel.keep[0, 9]


def test_zero_tprune_above_a_third_still_chooses_by_similarity():
    # 7 candidates (0 protected), remove 4 (> 7/3): importance alone would drop the 4 least attended
    # tokens 1-4; token 6 duplicates token 5 and token 4 is unique, so the rounds drop 6 instead of 4
    t = 8
    keys = torch.eye(t)[None].clone()
    keys[0, 6] = keys[0, 5]
    attn = torch.full((1, 1, t, t), 1.0)
    col = torch.tensor([9.0, 1.0, 1.1, 1.2, 1.3, 5.0, 1.4, 6.0])  # attention each token receives
    attn = attn * col / col.sum()  # every query attends alike: importance is col / col.sum()
    valid, prot = torch.ones(1, t, dtype=torch.bool), torch.zeros(1, t, dtype=torch.bool)
    prot[0, 0] = True
    sel = select_zero_tprune(attn, keys, valid, prot, torch.tensor([4]))
    removed = (~sel.keep[0]).nonzero().flatten().tolist()
    assert len(removed) == 4 and 6 in removed and 0 not in removed
    assert int(sel.dst[0, 6]) == 5  # represented by its duplicate


def test_random_is_a_function_of_position_and_seed_only():
    pos = torch.arange(12)[None]
    a, b = position_noise(pos, 0), position_noise(pos[:, :5], 0)
    assert torch.equal(a[:, :5], b) and not torch.equal(a, position_noise(pos, 1))
    assert float(a.min()) >= 0 and float(a.max()) < 1 and len(set(a.flatten().tolist())) == 12
    keys, attn = _keys_and_attn(12)
    valid, prot = torch.ones(2, 12, dtype=torch.bool), torch.zeros(2, 12, dtype=torch.bool)
    sel = select_random(attn.expand(2, -1, -1, -1), keys.expand(2, -1, -1), valid, prot, torch.tensor([4, 4]),
                        positions=pos.expand(2, -1), seed=3)
    expect = position_noise(pos[0], 3).argsort()[:4].sort().values.tolist()
    assert (~sel.keep[0]).nonzero().flatten().tolist() == expect and torch.equal(sel.keep[0], sel.keep[1])


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("steps", [0, 1, 3])
def test_attend_matches_probabilities_then_pagerank(steps, grad, monkeypatch):
    from prunekit.tokens import scores
    from prunekit.tokens import state as S

    monkeypatch.setattr(scores, "CHUNK_BYTES", 1)  # one (batch, head) slice per chunk: the chunk loop is exercised
    g = torch.Generator().manual_seed(0)
    b, t, heads, d = 2, 6, 3, 4
    q, k, v = (torch.randn(b, t, heads * d, generator=g, dtype=torch.float64, requires_grad=grad) for _ in range(3))
    valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    bias = torch.zeros(b, t, dtype=torch.float64).masked_fill(~valid, torch.finfo(torch.float64).min)[:, None, None, :]
    attn = S.attention_probs(q, k, heads, bias)
    ctx_ref = (attn @ v.view(b, t, heads, d).transpose(1, 2)).transpose(1, 2).flatten(2)
    ctx, imp = S.attend(q, k, v, heads, bias, valid, steps)
    assert torch.allclose(ctx, ctx_ref, atol=1e-12)
    if steps:
        assert torch.allclose(imp, weighted_pagerank(attn, valid, iters=steps), atol=1e-12)
        assert float(imp.detach()[1, 4:].abs().max()) == 0.0  # padding gets no importance
    else:
        assert imp is None
    if grad:
        ctx.sum().backward()
        assert q.grad is not None and torch.isfinite(q.grad).all()
