"""``apply_(model, config)``: patch a Hugging Face BERT-like encoder or the zoo ViT to prune tokens as it runs.

After attention in each pruning layer the layer's attention probabilities and keys rank the tokens
(``tokens.scores``), the removed ones leave the tensors (gather), and the MLP and every later layer
run on the kept tokens only; padding slots are masked, [CLS] (and for text the last real token,
[SEP], and ``special_ids``) never leave. A BERT-like encoder still returns ``last_hidden_state`` at
full length: each input position gets the kept token that stands for it (``TokenState.restore``), so
[CLS] pooling and the usual masked mean pooling work unchanged. Layers whose kept fraction is 1.0 run
the original code, so a config keeping everything is bit-identical to the dense model.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import METHODS
from .config import TokenPrune
from .scores import Selection
from .state import TokenState, attend, attention_probs

log = logging.getLogger(__name__)


@dataclass
class TokenPatch:
    """What ``apply_`` installed: the config, each layer's kept fraction, and the last forward's ``state``."""

    config: TokenPrune
    keeps: list[float]
    select: Callable[..., Selection] = field(repr=False)
    last: TokenState | None = field(default=None, repr=False)  # bookkeeping of the latest forward pass
    n_input: Tensor | None = field(default=None, repr=False)  # (B,) real tokens of the latest input

    def attention(self, q: Tensor, k: Tensor, v: Tensor, heads: int, bias: Tensor | None,
                  valid: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """A pruning layer's attention output ``(B, T, H*D)`` and what the method reads of it.

        Returns ``(ctx, attn, importance)``: the full probabilities ``attn`` only for a method that
        needs them (``needs == "probs"``, the default), PageRank ``importance`` for ``pagerank`` /
        ``received`` methods (``state.attend``, no ``(B, H, T, T)`` tensor), neither for ``none``.
        """
        needs = getattr(self.select, "needs", "probs")
        if needs == "probs":
            attn = attention_probs(q, k, heads, bias)  # (B, H, T, T)
            v_h = v.unflatten(-1, (heads, -1)).transpose(1, 2).contiguous()
            return (attn @ v_h).transpose(1, 2).flatten(2), attn, None
        if needs not in ("pagerank", "received", "none"):
            raise ValueError(f"token method {self.config.method!r} declares needs={needs!r}; accepted: "
                             "'probs', 'pagerank', 'received', 'none'")
        steps = {"pagerank": self.config.iters, "received": 1}.get(needs, 0)
        ctx, importance = attend(q, k, v, heads, bias, valid, steps)
        return ctx, None, importance

    def choose(self, state: TokenState, keep: float, attn: Tensor | None, keys: Tensor,
               importance: Tensor | None = None) -> Selection:
        """Run the method on one layer's attention and keys; log when fewer tokens could be removed."""
        n_remove = state.n_remove(keep)
        sel = self.select(attn=attn, keys=keys, valid=state.valid, protected=state.protected, n_remove=n_remove,
                          positions=state.origin, seed=self.config.seed + len(state.counts), iters=self.config.iters,
                          importance=importance)
        short = int((state.valid.sum(1) - sel.keep.sum(1) < n_remove).sum())
        if short:
            log.info("%s: %d sequence(s) kept more tokens than asked at layer step %d (not enough candidates)",
                     self.config.method, short, len(state.counts))
        return sel

    def tokens_kept(self) -> float:
        """Mean over sequences of the fraction of real tokens left after the last pruning layer (last forward)."""
        if self.last is None or not self.last.counts or self.n_input is None:
            return 1.0
        return float((self.last.counts[-1].double() / self.n_input.double().clamp(min=1)).mean())


def apply_(model: nn.Module, config: TokenPrune) -> TokenPatch:
    """Patch ``model`` in place to prune tokens by ``config``; returns the ``TokenPatch`` (its report)."""
    if not isinstance(config, TokenPrune):
        raise TypeError(f"config must be a prunekit.tokens.TokenPrune, got {type(config).__name__}")
    from ..zoo.vit import ViT

    if isinstance(model, ViT):
        if type(model).forward is not ViT.forward:
            raise TypeError(f"cannot prune tokens of {type(model).__name__}: its forward differs from the zoo ViT's")
        return _patch_vit(model, config)
    base = _bert_like(model)
    if base is None:
        raise TypeError(f"cannot prune tokens of {type(model).__name__}: accepted are the zoo ViT and Hugging "
                        "Face BERT-like encoders (BERT, RoBERTa, MiniLM: .embeddings and .encoder.layer)")
    return _patch_bert(base, config)


def _patch(config: TokenPrune, depth: int) -> TokenPatch:
    keeps = config.per_layer(depth)
    return TokenPatch(config, keeps, METHODS.get(config.method, "token").obj)


# ---------------------------------------------------------------------------------------------- zoo ViT
def _patch_vit(model: nn.Module, config: TokenPrune) -> TokenPatch:
    if isinstance(getattr(model, "token_patch", None), TokenPatch):
        raise ValueError("this ViT already prunes tokens; patch a fresh copy")
    patch = _patch(config, len(model.blocks))
    model.token_patch = patch
    model.forward = types.MethodType(_vit_forward, model)
    return patch


def _vit_attention(attn: nn.Module, x: Tensor, bias: Tensor | None) -> Tensor:
    """The zoo ViT's attention with an additive bias ``(B, 1, 1, T)`` (ToMe proportional attention)."""
    if bias is None:
        return attn(x)
    q, k, v = attn._split(attn.q(x)), attn._split(attn.k(x)), attn._split(attn.v(x))
    h = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, H, T, D)
    return attn.o(h.transpose(1, 2).flatten(2))


def _vit_forward(self: nn.Module, x: Tensor) -> Tensor:
    """The zoo ViT's forward with token pruning in the layers whose kept fraction is below 1."""
    patch: TokenPatch = self.token_patch
    h = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, P, dim)
    h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1) + self.pos_embed  # (B, T0, dim)
    b, t = h.shape[:2]
    valid = torch.ones(b, t, dtype=torch.bool, device=h.device)
    state = TokenState.start(valid, torch.arange(t, device=h.device).expand(b, t) == 0, h.dtype)
    for block, keep in zip(self.blocks, patch.keeps):
        bias = state.bias(h.dtype)
        if keep >= 1.0:
            h = block(h) if bias is None else _vit_mlp(block, h + _vit_attention(block.attn, block.norm1(h), bias))
            continue
        x_n, att = block.norm1(h), block.attn
        k = att.k(x_n)  # (B, T, H*D)
        ctx, attn, importance = patch.attention(att.q(x_n), k, att.v(x_n), att.num_heads, bias, state.valid)
        h = h + att.o(ctx)
        h, state = state.reduce(h, patch.choose(state, keep, attn, k, importance))
        h = _vit_mlp(block, h)
    patch.last, patch.n_input = state, valid.sum(1)
    return self.head(self.norm(h[:, 0]))


def _vit_mlp(block: nn.Module, h: Tensor) -> Tensor:
    return h + block.mlp(block.norm2(h))


# ------------------------------------------------------------------------------------- Hugging Face BERT
def _bert_like(model: nn.Module) -> nn.Module | None:
    """The BERT-like base model inside ``model`` (itself, or e.g. ``.bert`` / ``.roberta``), if any."""
    for m in model.modules():
        enc = getattr(m, "encoder", None)
        layers = getattr(enc, "layer", None)
        if hasattr(m, "embeddings") and isinstance(layers, nn.ModuleList) and len(layers) \
                and hasattr(getattr(getattr(layers[0], "attention", None), "self", None), "query"):
            return m
    return None


def _patch_bert(base: nn.Module, config: TokenPrune) -> TokenPatch:
    cfg = base.config
    if getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False):
        raise ValueError("token pruning needs a bidirectional encoder; this model is configured as a decoder")
    impl = getattr(cfg, "_attn_implementation", "eager") or "eager"
    if impl not in ("eager", "sdpa"):
        raise ValueError(f"attention implementation {impl!r} is not supported; use 'eager' or 'sdpa'")
    if isinstance(base.encoder, TokenPrunedEncoder):
        raise ValueError("this model already prunes tokens; patch a fresh copy")
    patch = _patch(config, len(base.encoder.layer))
    base.encoder = TokenPrunedEncoder(base.encoder, patch)
    base.embeddings.register_forward_pre_hook(base.encoder.see_inputs, with_kwargs=True)
    return patch


def _key_valid(mask: Tensor | None, b: int, t: int, device: torch.device) -> Tensor:
    """Real-token mask ``(B, T)`` from the encoder's attention mask (None, 2-D, or 4-D bool / additive)."""
    if mask is None:
        return torch.ones(b, t, dtype=torch.bool, device=device)
    m = mask[:, 0, 0, :] if mask.dim() == 4 else mask
    m = m.expand(b, t)
    return m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2


class TokenPrunedEncoder(nn.Module):
    """A BERT encoder (same ``layer`` list, so the same weight names) that prunes tokens between layers."""

    def __init__(self, encoder: nn.Module, patch: TokenPatch) -> None:
        super().__init__()
        self.config, self.layer = encoder.config, encoder.layer
        self.gradient_checkpointing = getattr(encoder, "gradient_checkpointing", False)
        self.patch = patch
        self._ids: Tensor | None = None

    def see_inputs(self, _m: nn.Module, args: tuple, kwargs: dict) -> None:
        """Embedding pre-hook: remember the input ids (for the special tokens)."""
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._ids = ids if torch.is_tensor(ids) else None

    def _protected(self, valid: Tensor) -> Tensor:
        """First and last real token, and every token whose id is in ``special_ids``."""
        pos = torch.arange(valid.shape[1], device=valid.device)[None, :]
        prot = (pos == 0) | (pos == valid.sum(1, keepdim=True) - 1)
        ids, special = self._ids, self.patch.config.special_ids
        if ids is not None and special and ids.shape == valid.shape:
            prot |= torch.isin(ids, torch.tensor(special, device=ids.device))
        return prot

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None, *args: Any,
                **kwargs: Any) -> Any:
        """Run the layers, pruning tokens where the kept fraction is below 1; full-length output."""
        from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions

        for k in ("encoder_hidden_states", "encoder_attention_mask", "cache", "use_cache"):
            kwargs.pop(k, None)
        h, mask, patch = hidden_states, attention_mask, self.patch
        b, t = h.shape[:2]
        valid = _key_valid(attention_mask, b, t, h.device)
        state = TokenState.start(valid, self._protected(valid), h.dtype)
        self._ids = None
        for layer, keep in zip(self.layer, patch.keeps):
            if keep >= 1.0:
                h = layer(h, mask, **kwargs)
                continue
            h, state = self._prune_layer(layer, h, mask, state, keep, kwargs)
            mask = state.bias(h.dtype)
        patch.last, patch.n_input = state, valid.sum(1)
        if state.counts:
            h = state.restore(h)
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=h)

    def _prune_layer(self, layer: nn.Module, h: Tensor, mask: Tensor | None, state: TokenState, keep: float,
                     kwargs: dict) -> tuple[Tensor, TokenState]:
        """One BERT layer: attention on all tokens, token selection, then the MLP on the kept ones."""
        from transformers.pytorch_utils import apply_chunking_to_forward

        sa = layer.attention.self
        q, k, v = sa.query(h), sa.key(h), sa.value(h)  # (B, T, d)
        ctx, attn, importance = self.patch.attention(q, k, v, sa.num_attention_heads, state.bias(h.dtype),
                                                     state.valid)  # ctx (B, T, d)
        sel = self.patch.choose(state, keep, attn, k, importance)
        if sel.merge:  # merge what the attention block outputs (ToMe's place)
            a, state = state.reduce(layer.attention.output(ctx, h), sel)
        else:  # pruned tokens leave before the output projection: it runs on the kept ones only
            both, state = state.reduce(torch.cat([ctx, h], dim=-1), sel)
            a = layer.attention.output(*both.split([ctx.shape[-1], h.shape[-1]], dim=-1))
        h = apply_chunking_to_forward(layer.feed_forward_chunk, layer.chunk_size_feed_forward, layer.seq_len_dim, a)
        return h, state

