"""A tiny Vision Transformer whose heads and MLP neurons are separate, removable units."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .small import _check_positive_int


class Attention(nn.Module):
    """Multi-head self-attention (Vaswani et al. 2017, Eq. 1) with separate ``q``, ``k``, ``v``, ``o`` layers.

    ``q``/``k``/``v`` map ``dim -> num_heads * head_dim``; ``o`` maps back to ``dim``. Structured pruning
    removes a head by deleting its ``head_dim`` rows of ``q``/``k``/``v`` and columns of ``o`` and then
    lowering ``num_heads``.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        inner = num_heads * head_dim
        self.q = nn.Linear(dim, inner)
        self.k = nn.Linear(dim, inner)
        self.v = nn.Linear(dim, inner)
        self.o = nn.Linear(inner, dim)

    def _split(self, t: Tensor) -> Tensor:
        """(B, N, H*D) -> (B, H, N, D)."""
        return t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        """Self-attention over tokens ``(B, N, dim)``, same shape out."""
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))  # x: (B, N, dim)
        h = nn.functional.scaled_dot_product_attention(q, k, v)  # (B, H, N, D)
        return self.o(h.transpose(1, 2).flatten(2))  # (B, N, dim)


class FeedForward(nn.Module):
    """Transformer MLP: ``fc1`` (dim -> mlp_dim), GELU, ``fc2`` (mlp_dim -> dim)."""

    def __init__(self, dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Token-wise MLP, ``(B, N, dim)`` in and out."""
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mlp_dim)

    def forward(self, x: Tensor) -> Tensor:
        """One pre-norm block, ``(B, N, dim)`` in and out."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Vision Transformer (Dosovitskiy et al. 2021, Eq. 1-4): patch embedding, class token, learned
    position embedding, pre-norm blocks, final LayerNorm, linear head on the class token.
    """

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 4,
        in_channels: int = 3,
        num_classes: int = 10,
        dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        head_dim: int = 16,
        mlp_dim: int = 128,
    ) -> None:
        super().__init__()
        for name, v in [("image_size", image_size), ("patch_size", patch_size), ("in_channels", in_channels),
                        ("num_classes", num_classes), ("dim", dim), ("depth", depth), ("num_heads", num_heads),
                        ("head_dim", head_dim), ("mlp_dim", mlp_dim)]:
            _check_positive_int(v, name)
        if image_size % patch_size:
            raise ValueError(f"image_size ({image_size}) must be a multiple of patch_size ({patch_size})")
        self.image_size, self.patch_size = image_size, patch_size
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.ModuleList(Block(dim, num_heads, head_dim, mlp_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the position table and class token, truncated N(0, 0.02) (the layers draw their own)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, C, image_size, image_size)``."""
        h = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, P, dim)
        cls = self.cls_token.expand(h.shape[0], -1, -1)  # (B, 1, dim)
        h = torch.cat([cls, h], dim=1) + self.pos_embed  # (B, P+1, dim)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h[:, 0]))  # (B, num_classes)
