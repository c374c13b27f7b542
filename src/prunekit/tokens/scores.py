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


CHUNK_BYTES = 1 << 20  # attention slices walked together by the PageRank: small enough to stay in cache


def weighted_pagerank(attn: Tensor, valid: Tensor | None = None, iters: int = 5, tol: float = 0.0) -> Tensor:
    """Token importance by Weighted PageRank on the attention graph (Wang et al. 2024, Zero-TPrune, I-stage).

    ``s^(t+1)_j = sum_i A_ij s^(t)_i`` from ``s^(0)`` uniform over the real tokens: a token matters when
    tokens that matter attend to it. Rows of ``A`` (B, H, T, T) are softmax-normalized, so the total
    stays 1. Runs ``iters`` steps (with ``tol > 0``, a chunk of heads stops earlier once none of its
    entries moves by more than ``tol``); heads are averaged at the end. Returns ``(B, T)``, zero on
    padding. The walk runs over a few (batch, head) slices at a time (``CHUNK_BYTES``), all steps on a
    slice while it is in cache: the same numbers as one batched product per step, faster on a CPU.
    """
    b, h, t, _ = attn.shape
    v = torch.ones(b, t, dtype=torch.bool, device=attn.device) if valid is None else valid
    s0, pad = pagerank_start(v, h, attn.dtype)
    a = attn.reshape(b * h, t, t)  # padding rows start at 0 and padding columns are zeroed each step
    out = []
    for i, j in chunks(b * h, t, attn.element_size()):
        out.append(pagerank_walk(s0[i:j], a[i:j], iters, None if pad is None else pad[i:j], tol))
    return torch.cat(out).view(b, h, t).mean(1)


def chunks(n: int, t: int, element_size: int) -> list[tuple[int, int]]:
    """``[(i, j), ...]`` covering ``n`` slices of ``T x T`` elements, about ``CHUNK_BYTES`` at a time."""
    step = max(1, CHUNK_BYTES // max(1, t * t * element_size))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def pagerank_start(valid: Tensor, heads: int, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """``s^(0)`` uniform over the real tokens ``(B*H, 1, T)``, and the padding mask of each step (None: no pads)."""
    b, t = valid.shape
    vf = valid.to(dtype)[:, None, :]  # (B, 1, T)
    s0 = (vf / vf.sum(-1, keepdim=True).clamp(min=1)).expand(b, heads, t).reshape(b * heads, 1, t)
    return s0, None if bool(valid.all()) else vf.expand(b, heads, t).reshape(b * heads, 1, t)


def pagerank_walk(s: Tensor, a: Tensor, steps: int, pad: Tensor | None = None, tol: float = 0.0) -> Tensor:
    """``steps`` Weighted PageRank steps ``s <- s A`` on slices ``a`` ``(N, T, T)`` from ``s`` ``(N, 1, T)``.

    ``pad`` zeroes padding after each step; with ``tol > 0`` the walk stops once no entry moves by more.
    """
    for _ in range(steps):
        nxt = torch.bmm(s, a)
        if pad is not None:
            nxt = nxt * pad
        done = tol > 0 and bool((nxt - s).abs().max() <= tol)
        s = nxt
        if done:
            break
    return s


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


def _column_bias(targets: Tensor, dtype: torch.dtype) -> Tensor:
    """``(B, 1, T)``: 0 on target columns, -inf elsewhere (added to a similarity before a max)."""
    return torch.zeros(targets.shape, dtype=dtype, device=targets.device).masked_fill(~targets, NEG)[:, None, :]


def nearest_value(sim: Tensor, targets: Tensor) -> Tensor:
    """Every token's largest similarity to a target token ``(B, T)`` (``nearest`` without the index: cheaper)."""
    return (sim + _column_bias(targets, sim.dtype)).amax(dim=2)


def represent(removed: Tensor, keep: Tensor, keys: Tensor | None = None, sim: Tensor | None = None) -> Tensor:
    """``dst`` ``(B, T)``: each removed token's most similar kept token (key cosine), every other token itself.

    Only the removed tokens' rows of the similarity are formed (from ``keys``, or taken from ``sim``).
    """
    b, t = removed.shape
    own = torch.arange(t, device=removed.device).expand(b, t)
    r = int(removed.sum(1).max()) if removed.numel() else 0
    if r == 0:
        return own
    rows = (~removed).to(torch.int8).argsort(dim=1, stable=True)[:, :r]  # removed tokens first
    if sim is None:
        if keys is None:
            raise ValueError("represent needs the keys or the similarity matrix")
        k = torch.nn.functional.normalize(keys, dim=-1)
        part = k.gather(1, rows[..., None].expand(-1, -1, k.shape[2])) @ k.transpose(1, 2)  # (B, r, T)
    else:
        part = sim.gather(1, rows[..., None].expand(-1, -1, t))
    best = (part + _column_bias(keep, part.dtype)).argmax(dim=2)  # (B, r)
    hit = removed.gather(1, rows)
    return own.clone().scatter_(1, rows, torch.where(hit, best, rows))


def _prune(removed: Tensor, valid: Tensor, keys: Tensor) -> Selection:
    """Drop ``removed``; each removed token is represented by its most similar kept token."""
    keep = valid & ~removed
    return Selection(keep, represent(removed, keep, keys=keys))


def select_attention(attn: Tensor | None, keys: Tensor, valid: Tensor, protected: Tensor, n_remove: Tensor,
                     importance: Tensor | None = None, **_: object) -> Selection:
    """Drop the tokens that receive the least attention (mean over heads and queries; ``importance`` if given)."""
    score = importance if importance is not None else attention_received(_need(attn), valid)
    return _prune(lowest(score, valid & ~protected, n_remove), valid, keys)


def position_noise(positions: Tensor, seed: int) -> Tensor:
    """A fixed pseudo-random number in [0, 1) per input position and ``seed`` (a 32-bit integer hash).

    The number depends on the position and the seed only, never on the batch, so a padded batch draws
    what each sequence alone draws. Hash: two xor-shift-multiply rounds (multiplier ``0x45d9f3b``) on
    ``position + 0x9E3779B9 * (seed + 1)`` modulo ``2**32``.
    """
    m = 0xFFFFFFFF
    x = (positions.long() + ((0x9E3779B9 * (seed + 1)) & m)) & m
    for _ in range(2):
        x = (((x >> 16) ^ x) * 0x45D9F3B) & m
    x = (x >> 16) ^ x
    return x.double() / 2.0 ** 32


def select_random(attn: Tensor | None, keys: Tensor, valid: Tensor, protected: Tensor, n_remove: Tensor,
                  positions: Tensor | None = None, seed: int = 0, **_: object) -> Selection:
    """Drop uniformly random non-special tokens: the lowest ``position_noise`` of their input positions.

    ``positions`` ``(B, T)``: the input position of the token in each slot (default: the slot index);
    ``seed`` varies the draw (the token patch adds the pruning step). Batch-invariant.
    """
    pos = torch.arange(valid.shape[1], device=valid.device).expand_as(valid) if positions is None else positions
    return _prune(lowest(position_noise(pos, seed), valid & ~protected, n_remove), valid, keys)


def select_zero_tprune(attn: Tensor | None, keys: Tensor, valid: Tensor, protected: Tensor, n_remove: Tensor,
                       iters: int = 5, importance: Tensor | None = None, **_: object) -> Selection:
    """Zero-TPrune (Wang et al. 2024, CVPR): I-stage Weighted PageRank, S-stage importance-guided similarity.

    I-stage: importance ``s`` by ``weighted_pagerank`` (``s <- A^T s``, Sec. 3.1). S-stage (Sec. 3.2):
    the least important candidates form the source group, every other token still in place the target
    group; a source token's redundancy is its largest key cosine to a target token, and the most
    redundant source tokens are pruned. The S-stage runs in rounds: a round removes ``r`` of the ``n``
    candidates left, at most ``ceil(n / 3)``, from a source group of ``max(r, min(2r, n - r))``, so it
    always chooses among (up to) twice as many sources as it removes and the most important third stays
    a target. A request above a third of the tokens therefore takes several rounds (importance is not
    recomputed; similarity is to the targets left) instead of falling back to importance alone. Each
    removed token is represented by its most similar kept token. ``importance``: the I-stage scores
    already computed (``state.attend`` with ``iters`` steps), else they come from ``attn``.
    """
    cand = valid & ~protected
    s = importance if importance is not None else weighted_pagerank(_need(attn), valid, iters=iters)
    sim = cosine(keys)
    removed = torch.zeros_like(valid)
    left = n_remove.clone()
    while bool((left > 0).any()):
        live = cand & ~removed
        n = live.sum(1)
        r = torch.minimum(left, torch.div(n + 2, 3, rounding_mode="floor"))
        source = lowest(s, live, torch.maximum(r, torch.minimum(2 * r, n - r)))
        step = lowest(-nearest_value(sim, valid & ~removed & ~source), source, r)
        if not bool(step.any()):
            break  # no candidate left anywhere
        removed |= step
        left = left - step.sum(1)
    keep = valid & ~removed
    return Selection(keep, represent(removed, keep, sim=sim))


def select_tome(attn: Tensor | None, keys: Tensor, valid: Tensor, protected: Tensor, n_remove: Tensor,
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


def _need(attn: Tensor | None) -> Tensor:
    if attn is None:
        raise ValueError("this token method needs the attention probabilities (attn) or precomputed importance")
    return attn


# What each method reads of the attention, so the patch computes only that ("probs": the full
# (B, H, T, T) tensor, the default for a method registered without this attribute).
select_zero_tprune.needs = "pagerank"  # type: ignore[attr-defined]  # config.iters PageRank steps
select_attention.needs = "received"  # type: ignore[attr-defined]  # one step
select_tome.needs = "none"  # type: ignore[attr-defined]
select_random.needs = "none"  # type: ignore[attr-defined]
