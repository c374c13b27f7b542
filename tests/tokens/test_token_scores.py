"""Token scores against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from prunekit.tokens.scores import attention_received, lowest, select_tome, select_zero_tprune, weighted_pagerank

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
