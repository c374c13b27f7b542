"""Token scores and selections: pure tensor functions, one per method (score -> select of the token stage).

Every selection takes the layer's attention probabilities ``attn`` ``(B, H, T, T)`` (rows: queries),
its keys ``keys`` ``(B, T, D)``, the masks ``valid`` (real tokens) and ``protected`` (never removed:
[CLS], [SEP], special ids) ``(B, T)`` and ``n_remove`` ``(B,)`` (tokens to remove in each sequence),
and returns a ``Selection``: ``keep`` ``(B, T)`` and ``dst`` ``(B, T)``, the kept token that stands for
each removed one (merged into it when ``merge`` is set, else only copied back to its position when the
full-length output is restored). A sequence's selection depends on that sequence only, so a padded
batch selects what each sequence alone would (pads are never candidates and never targets).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

NEG = float("-inf")


@dataclass(frozen=True)
class Selection:
    """Which tokens stay (``keep``), where each removed one goes (``dst``), and whether it is merged there."""

    keep: Tensor  # (B, T) bool
    dst: Tensor  # (B, T) long: own index for kept tokens and pads
    merge: bool = False


def weighted_pagerank(attn: Tensor, valid: Tensor | None = None, iters: int = 5, tol: float = 1e-7) -> Tensor:
    """Token importance by Weighted PageRank on the attention graph (Wang et al. 2024, Zero-TPrune, I-stage).

    ``s^(t+1)_j = sum_i A_ij s^(t)_i`` from ``s^(0)`` uniform over the real tokens: a token matters when
    tokens that matter attend to it. Rows of ``A`` (B, H, T, T) are softmax-normalized, so the total
    stays 1. Runs at most ``iters`` steps (stops once no entry moves by more than ``tol``); heads are
    averaged at the end. Returns ``(B, T)``, zero on padding.
    """
    b, h, t, _ = attn.shape
    v = torch.ones(b, t, dtype=torch.bool, device=attn.device) if valid is None else valid
    vf = v.to(attn.dtype)[:, None, :]  # (B, 1, T)
    s = (vf / vf.sum(-1, keepdim=True).clamp(min=1)).expand(b, h, t).reshape(b * h, 1, t)
    a = attn.reshape(b * h, t, t)  # padding rows start at 0 and padding columns are zeroed each step
    for _ in range(iters):
        nxt = torch.bmm(s, a) * vf.expand(b, h, t).reshape(b * h, 1, t)
        done = bool((nxt - s).abs().max() <= tol)
        s = nxt
        if done:
            break
    return s.view(b, h, t).mean(1)


def attention_received(attn: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean attention each token receives from the real queries, over heads: the standard baseline ``(B, T)``."""
    return weighted_pagerank(attn, valid, iters=1)


def _ranks(score: Tensor) -> Tensor:
    """Rank of each entry in ascending order along dim 1 (ties: lower index first)."""
    order = score.argsort(dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(score.shape[1], device=score.device).expand_as(order).contiguous())
    return ranks


def lowest(score: Tensor, candidates: Tensor, n: Tensor) -> Tensor:
    """Mask ``(B, T)`` of the ``n[b]`` candidates with the lowest score in each row (fewer if too few)."""
    score = score.masked_fill(~candidates, float("inf"))
    return (_ranks(score) < n[:, None]) & candidates


def cosine(keys: Tensor) -> Tensor:
    """Pairwise cosine similarity of the tokens' keys: ``(B, T, D)`` -> ``(B, T, T)``."""
    k = torch.nn.functional.normalize(keys, dim=-1)
    return k @ k.transpose(1, 2)


def nearest(sim: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """For every token, its largest similarity to a target token and that target's index ``(B, T)`` each."""
    best, idx = sim.masked_fill(~targets[:, None, :], NEG).max(dim=2)
    return best, idx


def _prune(removed: Tensor, valid: Tensor, keys: Tensor) -> Selection:
    """Drop ``removed``; each removed token is represented by its most similar kept token."""
    keep = valid & ~removed
    _, idx = nearest(cosine(keys), keep)
    own = torch.arange(keep.shape[1], device=keep.device).expand_as(idx)
    return Selection(keep, torch.where(removed, idx, own))


def select_attention(attn: Tensor, keys: Tensor, valid: Tensor, protected: Tensor, n_remove: Tensor,
                     **_: object) -> Selection:
    """Drop the tokens that receive the least attention (mean over heads and queries)."""
    removed = lowest(attention_received(attn, valid), valid & ~protected, n_remove)
    return _prune(removed, valid, keys)


def select_random(attn: Tensor, keys: Tensor, valid: Tensor, protected: Tensor, n_remove: Tensor,
                  generator: torch.Generator | None = None, **_: object) -> Selection:
    """Drop uniformly random non-special tokens (seeded by ``generator``)."""
    score = torch.rand(valid.shape, generator=generator).to(valid.device)
    return _prune(lowest(score, valid & ~protected, n_remove), valid, keys)


def select_zero_tprune(attn: Tensor, keys: Tensor, valid: Tensor, protected: Tensor, n_remove: Tensor,
                       iters: int = 5, **_: object) -> Selection:
    """Zero-TPrune (Wang et al. 2024, CVPR): I-stage Weighted PageRank, S-stage importance-guided similarity.

    I-stage: importance ``s`` by ``weighted_pagerank`` (``s <- A^T s``). S-stage: the least important
    non-special tokens form the source group, every other real token the target group; each source
    token's similarity is its largest key cosine to a target token, and the ``r`` most similar
    (redundant) source tokens are pruned. The source group holds ``max(r, min(2r, n - r))`` of the ``n``
    candidates, so the ``n - r`` most important stay targets: with ``r >= n / 2`` no similarity choice
    is left and the ``r`` least important go (the I-stage alone).
    """
    cand = valid & ~protected
    s = weighted_pagerank(attn, valid, iters=iters)
    source = lowest(s, cand, torch.maximum(n_remove, torch.minimum(2 * n_remove, cand.sum(1) - n_remove)))
    best, idx = nearest(cosine(keys), valid & ~source)
    removed = lowest(-best, source, n_remove)
    own = torch.arange(valid.shape[1], device=valid.device).expand_as(idx)
    return Selection(valid & ~removed, torch.where(removed, idx, own))


def select_tome(attn: Tensor, keys: Tensor, valid: Tensor, protected: Tensor, n_remove: Tensor,
                **_: object) -> Selection:
    """ToMe bipartite soft matching (Bolya et al. 2023, Sec. 3): merge the ``r`` most similar A->B pairs.

    Tokens alternate between sets A (even positions) and B (odd); each A token's edge goes to its most
    similar B token (key cosine); the ``r`` strongest edges are merged, size-weighted (their sizes add
    and later layers use proportional attention, ``softmax(QK^T/sqrt(d) + log s)``). At most the A
    set's candidates can merge in one layer.
    """
    pos = torch.arange(valid.shape[1], device=valid.device)
    a_set = valid & ~protected & (pos % 2 == 0)
    b_set = valid & ~protected & (pos % 2 == 1)
    best, idx = nearest(cosine(keys), b_set)
    removed = lowest(-best, a_set & torch.isfinite(best), n_remove)
    own = pos.expand_as(idx)
    return Selection(valid & ~removed, torch.where(removed, idx, own), merge=True)
