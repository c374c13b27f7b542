"""The zoo ViT with a SoftHGNN soft-hyperedge branch in every block (``vit-softhgnn``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..tokens.hyperedge import SoftHyperedge
from .vit import ViT


class SoftHGNNViT(ViT):
    """``ViT`` whose blocks run ``x + attn``, then ``x + SoftHyperedge(norm(x))``, then ``x + mlp``.

    Same width as the plain ViT; ``num_edges`` hyperedges per block, each input uses its ``top_k``
    (Lei et al. 2025, SoftHGNN); ``balance`` weighs the load-balancing loss (0: off).
    """

    def __init__(self, image_size: int = 8, patch_size: int = 2, in_channels: int = 1, num_classes: int = 10,
                 dim: int = 64, depth: int = 2, num_heads: int = 4, head_dim: int = 16, mlp_dim: int = 128,
                 num_edges: int = 8, top_k: int = 4, balance: float = 0.01) -> None:
        super().__init__(image_size, patch_size, in_channels, num_classes, dim, depth, num_heads, head_dim, mlp_dim)
        self.hyper = nn.ModuleList(SoftHyperedge(dim, num_edges, top_k, balance) for _ in range(depth))
        self.hyper_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, C, image_size, image_size)``."""
        h = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, P, dim)
        h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1) + self.pos_embed  # (B, P+1, dim)
        for block, hyper, norm in zip(self.blocks, self.hyper, self.hyper_norms):
            h = h + block.attn(block.norm1(h))
            h = h + hyper(norm(h))
            h = h + block.mlp(block.norm2(h))
        return self.head(self.norm(h[:, 0]))

    def usage(self) -> Tensor:
        """Hyperedges chosen by the last batch, ``(depth, B, num_edges)`` bool."""
        return torch.stack([hy.usage for hy in self.hyper])
