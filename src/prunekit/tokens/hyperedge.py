"""``SoftHyperedge``: soft hyperedges generated from the tokens, top-k selected per input (SoftHGNN).

Lei et al. 2025, *SoftHGNN: Soft Hypergraph Neural Networks for General Visual Recognition*: ``M``
hyperedges are learnable prototypes shifted by the input's global context; every token takes part in
every chosen hyperedge with a soft weight (scaled dot product of the projected token and the
hyperedge); messages go vertex -> hyperedge (participation-weighted mean) -> vertex. With sparse
selection a gate on the global context keeps only each input's ``top_k`` hyperedges, so the cost
scales with ``k``, and a load-balancing loss keeps all hyperedges in use; it is written here in the
mixture-of-experts form of Switch Transformer (Fedus et al. 2022, Eq. 4): ``M * sum_m f_m P_m``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _AuxLoss(torch.autograd.Function):
    """Identity on ``y`` whose backward also sends gradient 1 to ``aux``: as if ``aux`` were added to the loss."""

    @staticmethod
    def forward(ctx: object, y: Tensor, aux: Tensor) -> Tensor:  # type: ignore[override]
        return y.view_as(y)

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return grad, torch.ones((), dtype=grad.dtype, device=grad.device)


def with_aux_loss(y: Tensor, aux: Tensor) -> Tensor:
    """``y`` unchanged; any loss computed from it gets ``aux``'s gradient too (once per backward pass)."""
    return _AuxLoss.apply(y, aux)


def load_balance_loss(gate: Tensor, chosen: Tensor) -> Tensor:
    """Switch-style balance ``M * sum_m f_m P_m``: ``f`` share of selections, ``P`` mean gate (1 when uniform)."""
    m = gate.shape[-1]
    f = chosen.float().mean(0) / chosen.float().sum(-1).mean().clamp(min=1)  # (M,) sums to 1
    return m * (f.detach() * gate.mean(0)).sum()


class SoftHyperedge(nn.Module):
    """Soft hypergraph message passing over tokens ``(B, N, dim)`` with ``top_k`` of ``num_edges`` hyperedges.

    ``balance`` weighs the load-balancing loss (0: off); in training it reaches the gradient of the loss
    computed from this module's output (``with_aux_loss``) and ``aux_loss`` holds its last value.
    ``usage`` holds the last batch's chosen hyperedges ``(B, M)``.
    """

    def __init__(self, dim: int, num_edges: int = 8, top_k: int | None = None, balance: float = 0.01) -> None:
        super().__init__()
        k = num_edges if top_k is None else top_k
        if not 1 <= k <= num_edges:
            raise ValueError(f"top_k must be in [1, num_edges={num_edges}], got {top_k!r}")
        if balance < 0:
            raise ValueError(f"balance must be >= 0, got {balance!r}")
        self.num_edges, self.top_k, self.balance = num_edges, k, float(balance)
        self.prototypes = nn.Embedding(num_edges, dim)  # (M, dim) learnable hyperedge prototypes
        nn.init.normal_(self.prototypes.weight, std=dim ** -0.5)
        self.context = nn.Linear(dim, dim)  # global context -> hyperedge offset
        self.gate = nn.Linear(dim, num_edges)  # global context -> hyperedge selection logits
        self.vertex = nn.Linear(dim, dim)  # tokens -> participation queries
        self.edge = nn.Linear(dim, dim)  # hyperedge message
        self.out = nn.Linear(dim, dim)
        self.aux_loss: Tensor | None = None
        self.usage: Tensor | None = None

    def select(self, ctx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Gate probabilities ``(B, M)``, the chosen hyperedges ``(B, k)`` and their renormalized weights."""
        gate = self.gate(ctx).softmax(-1)  # (B, M)
        w, top = gate.topk(self.top_k, dim=-1)  # (B, k)
        return gate, top, w / w.sum(-1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        """Tokens ``(B, N, dim)`` -> hyperedge messages ``(B, N, dim)`` (add them residually)."""
        ctx = x.mean(1)  # (B, dim)
        gate, top, w = self.select(ctx)
        e = self.prototypes(top) + self.context(ctx)[:, None, :]  # (B, k, dim)
        logits = self.vertex(x) @ e.transpose(1, 2) * x.shape[-1] ** -0.5  # (B, N, k) participation
        h = self.edge(logits.softmax(1).transpose(1, 2) @ x)  # (B, k, dim): vertex -> hyperedge
        y = self.out(logits.softmax(2) @ (h * w[..., None]))  # (B, N, dim): hyperedge -> vertex
        chosen = torch.zeros_like(gate, dtype=torch.bool).scatter_(1, top, True)
        self.usage = chosen.detach()
        if self.training and self.balance > 0:
            self.aux_loss = load_balance_loss(gate, chosen)
            y = with_aux_loss(y, self.balance * self.aux_loss)
        return y
