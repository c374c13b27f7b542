"""The tokens in flight between layers: values, sizes, masks and the map back to the input positions.

``TokenState.reduce`` applies a ``Selection``: the kept tokens are gathered (so the dropped ones really
leave the tensors), merged ones are folded into their destination size-weighted, and ``src`` keeps, for
every input position, the slot that now stands for it, so ``restore`` can give a full-length output
whose masked mean over the input mask is the size-weighted mean of the kept tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from .scores import Selection, chunks, pagerank_start, pagerank_walk


@dataclass
class TokenState:
    """Per-sequence token bookkeeping; ``T`` shrinks as layers prune, ``T0`` is the input length."""

    valid: Tensor  # (B, T) bool: real tokens (False: padding slots)
    protected: Tensor  # (B, T) bool: never removed
    size: Tensor  # (B, T) float: input tokens each slot stands for (ToMe sizes)
    src: Tensor  # (B, T0) long: slot that stands for each input position
    origin: Tensor  # (B, T) long: input position of the token in each slot
    merged: bool = False  # sizes differ from 1: later attention must add log(size)
    counts: list[Tensor] = field(default_factory=list)  # (B,) real tokens after each pruning step

    @staticmethod
    def start(valid: Tensor, protected: Tensor, dtype: torch.dtype) -> TokenState:
        """The state of an unpruned sequence batch ``(B, T0)``."""
        b, t = valid.shape
        pos = torch.arange(t, device=valid.device).expand(b, t)
        return TokenState(valid, protected & valid, torch.ones(b, t, dtype=dtype, device=valid.device),
                          pos.clone(), pos.clone())

    def n_remove(self, keep: float) -> Tensor:
        """Tokens to remove per sequence so that ``round(keep * n)`` real ones stay (specials always stay)."""
        n = self.valid.sum(1)
        target = torch.floor(n.to(torch.float64) * keep + 0.5).long()
        target = torch.maximum(target, self.protected.sum(1))
        return (n - target).clamp(min=0)

    def reduce(self, x: Tensor, sel: Selection) -> tuple[Tensor, TokenState]:
        """Apply ``sel`` to ``x`` ``(B, T, d)``: ``(B, T', d)`` and the new state, ``T'`` the largest kept count."""
        keep = sel.keep
        n_keep = keep.sum(1)  # (B,)
        t_new = max(int(n_keep.max()), 1)
        slot = (~keep).to(torch.int8).argsort(dim=1, stable=True)[:, :t_new]  # kept first, input order
        rank = keep.long().cumsum(1) - 1  # (B, T): new slot of each kept token
        dst = torch.where(self.valid, sel.dst, torch.zeros_like(sel.dst))
        new_of_old = torch.where(keep, rank, rank.gather(1, dst)).clamp(min=0)  # (B, T)
        valid = torch.arange(t_new, device=x.device)[None, :] < n_keep[:, None]
        if sel.merge:
            w = self.size * self.valid  # (B, T); padding weighs nothing
            num = x.new_zeros(x.shape[0], t_new, x.shape[2]).scatter_add_(
                1, new_of_old[..., None].expand(-1, -1, x.shape[2]), x * w[..., None].to(x.dtype))
            size = w.new_zeros(x.shape[0], t_new).scatter_add_(1, new_of_old, w)
            x_new = num / size.clamp(min=1e-12)[..., None].to(x.dtype)
            size = torch.where(valid, size, torch.ones_like(size))
        else:
            x_new = x.gather(1, slot[..., None].expand(-1, -1, x.shape[2]))
            size = self.size.gather(1, slot)
        state = replace(self, valid=valid, protected=self.protected.gather(1, slot) & valid, size=size,
                        src=new_of_old.gather(1, self.src), origin=self.origin.gather(1, slot),
                        merged=self.merged or sel.merge, counts=[*self.counts, n_keep])
        return x_new, state

    def bias(self, dtype: torch.dtype) -> Tensor | None:
        """Additive attention bias ``(B, 1, 1, T)``: ``log(size)`` on real tokens, the dtype's min on padding."""
        if bool(self.valid.all()) and not self.merged:
            return None
        low = torch.finfo(dtype).min
        logs = self.size.to(dtype).log() if self.merged else torch.zeros_like(self.size, dtype=dtype)
        return torch.where(self.valid, logs, torch.full_like(logs, low))[:, None, None, :]

    def restore(self, x: Tensor) -> Tensor:
        """Full-length output ``(B, T0, d)``: every input position gets the slot that stands for it."""
        return x.gather(1, self.src[..., None].expand(-1, -1, x.shape[2]))

    def kept_positions(self) -> list[list[int]]:
        """Per sequence, the input positions of the tokens still in flight (real slots only)."""
        return [o[v].tolist() for o, v in zip(self.origin, self.valid)]


def attention_probs(q: Tensor, k: Tensor, heads: int, bias: Tensor | None) -> Tensor:
    """Softmax attention ``(B, H, T, T)`` from projected queries and keys ``(B, T, H*D)`` (Vaswani et al. Eq. 1)."""
    b, t, _ = q.shape
    d = q.shape[-1] // heads
    qh = (q * d ** -0.5).view(b, t, heads, d).transpose(1, 2).contiguous()  # (B, H, T, D), dense for the bmm
    kt = k.view(b, t, heads, d).permute(0, 2, 3, 1).contiguous()  # (B, H, D, T)
    logits = qh @ kt  # (B, H, T, T)
    if bias is not None:
        logits += bias
    return logits.softmax(-1)


def attend(q: Tensor, k: Tensor, v: Tensor, heads: int, bias: Tensor | None, valid: Tensor,
           steps: int) -> tuple[Tensor, Tensor | None]:
    """Softmax attention output ``(B, T, H*D)`` and, with ``steps > 0``, Weighted PageRank importance ``(B, T)``.

    The same numbers as ``attention_probs`` followed by ``A @ V`` and ``scores.weighted_pagerank(A,
    valid, steps)`` (Zero-TPrune's I-stage; ``steps = 1`` is the attention each token receives), but
    computed a few (batch, head) slices at a time, so each slice's probabilities are used for the
    output and for every PageRank step while they are in cache and the ``(B, H, T, T)`` tensor is
    never formed. ``steps = 0``: fused scaled-dot-product attention, no importance.
    """
    b, t, _ = q.shape
    d = q.shape[-1] // heads
    if steps <= 0:
        out = torch.nn.functional.scaled_dot_product_attention(
            q.view(b, t, heads, d).transpose(1, 2), k.view(b, t, heads, d).transpose(1, 2),
            v.view(b, t, heads, d).transpose(1, 2), attn_mask=bias)
        return out.transpose(1, 2).flatten(2), None
    n = b * heads
    qh = (q * d ** -0.5).view(b, t, heads, d).transpose(1, 2).reshape(n, t, d)
    kh = k.view(b, t, heads, d).transpose(1, 2).reshape(n, t, d)
    vh = v.view(b, t, heads, d).transpose(1, 2).reshape(n, t, d)
    s0, pad = pagerank_start(valid, heads, q.dtype)
    bias_n = None if bias is None else bias.expand(b, heads, 1, t).reshape(n, 1, t)
    ctx, score = [], []
    for i, j in chunks(n, t, q.element_size()):
        logits = torch.bmm(qh[i:j], kh[i:j].transpose(1, 2))
        if bias_n is not None:
            logits = logits + bias_n[i:j]
        a = logits.softmax(-1)
        ctx.append(torch.bmm(a, vh[i:j]))
        score.append(pagerank_walk(s0[i:j], a, steps, None if pad is None else pad[i:j]))
    out = torch.cat(ctx).view(b, heads, t, d).transpose(1, 2).reshape(b, t, heads * d)
    return out, torch.cat(score).view(b, heads, t).mean(1)
