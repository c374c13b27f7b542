"""A small self-supervised encoder for prototype scores: SimCLR (NT-Xent on two augmented views), no labels.

Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations" (SimCLR):
two random views of every example go through the encoder ``f`` and a projection head ``g``; the
NT-Xent loss (Eq. 1) pulls the two views of one example together against the other ``2B - 2`` views of
the batch. The representation ``h = f(x)`` (before ``g``) is what ``embed`` returns. Sorscher et al. 2022,
"Beyond neural scaling laws", Sec. 5, score examples by their distance to k-means prototypes of such
self-supervised embeddings (SwAV there).

Input shapes: ``x`` is ``(N, *shape)``. ``shape = (L,)`` is one 1-D signal per row (a flat image is a
1-D signal too); ``shape = (C, L)`` is ``C`` channels of a 1-D signal; ``shape = (C, H, W)`` is an image
with ``C`` channels. The backbone is a small ConvNet of the matching rank (``Conv1d`` or ``Conv2d``) with
global mean and max pooling, so it works for any length or size. Augmentations act on the spatial axes
only, one independent draw per example and view: a circular shift by up to ``shift`` of each spatial
axis's length, a scaling by a factor in ``[1 - scale, 1 + scale]``, additive Gaussian noise of standard
deviation ``noise`` (inputs are standardised first with the data set's mean and std), and masking each
spatial position (all channels) to zero with probability ``mask``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .checks import check_nonneg_float, check_positive_int

log = logging.getLogger(__name__)


def _check_x(x: Any) -> Tensor:
    """``x`` as a finite float32 CPU tensor ``(N, *shape)`` with 1 to 3 sample dimensions."""
    t = x.detach().cpu() if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))
    if not (t.is_floating_point() or t.dtype in (torch.uint8, torch.int16, torch.int32, torch.int64)):
        raise TypeError(f"x must hold real numbers, got dtype {t.dtype}")
    if t.dim() < 2 or t.dim() > 4:
        raise ValueError(f"x must be (N, L), (N, C, L) or (N, C, H, W) (2 to 4 dims), got shape {tuple(t.shape)}")
    if t.shape[0] < 2 or t[0].numel() == 0:
        raise ValueError(f"x must hold at least 2 examples with at least one value each, got shape {tuple(t.shape)}")
    t = t.float()
    if not torch.isfinite(t).all():
        raise ValueError("x contains NaN or infinite values")
    return t


def _channels_first(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Sample shape as ``(C, *spatial)``: a 1-D row ``(L,)`` becomes ``(1, L)``."""
    return (1, *shape) if len(shape) == 1 else tuple(shape)


def _roll_each(x: Tensor, shifts: Tensor, dim: int) -> Tensor:
    """Circular shift of every example ``x[b]`` by its own ``shifts[b]`` positions along ``dim``."""
    n = x.shape[dim]
    idx = (torch.arange(n)[None, :] - shifts[:, None]) % n  # (B, n)
    view = [len(x)] + [1] * (x.dim() - 1)
    view[dim] = n
    idx = idx.reshape(view).expand_as(x)
    return torch.gather(x, dim, idx)


def augment(x: Tensor, gen: torch.Generator, shift: float = 0.1, scale: float = 0.2, noise: float = 0.1,
            mask: float = 0.1) -> Tensor:
    """One random view of a batch ``x (B, C, *spatial)``: shift, scale, noise and masking (see the module doc)."""
    b, spatial = len(x), x.shape[2:]
    for d, n in enumerate(spatial, start=2):
        m = int(round(shift * n))
        if m > 0:
            x = _roll_each(x, torch.randint(-m, m + 1, (b,), generator=gen), d)
    bcast = (b,) + (1,) * (x.dim() - 1)
    x = x * (1.0 + scale * (2.0 * torch.rand(bcast, generator=gen) - 1.0))
    if noise > 0:
        x = x + noise * torch.randn(x.shape, generator=gen)
    if mask > 0:
        x = x * (torch.rand((b, 1, *spatial), generator=gen) >= mask)
    return x


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent loss of SimCLR (Chen et al. 2020, Eq. 1) for projections of two views ``z1, z2 (B, p)``.

    ``l(i, j) = -log exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau)`` with cosine
    ``sim``, averaged over all ``2B`` anchors (each view's positive is the other view of its example).
    """
    z = nn.functional.normalize(torch.cat([z1, z2]), dim=1)  # (2B, p)
    sim = z @ z.T / temperature  # (2B, 2B)
    sim = sim.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))
    b = len(z1)
    pos = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)  # index of each anchor's positive
    return nn.functional.cross_entropy(sim, pos)


class SSLEncoder(nn.Module):
    """Small ConvNet ``f`` for rows of shape ``(B, *shape)`` or flat ``(B, prod(shape))``: conv-BN-ReLU x3,
    global mean and max pooling, linear to ``dim``. ``head`` is SimCLR's projection ``g`` (training only)."""

    def __init__(self, shape: tuple[int, ...], dim: int = 64, width: int = 32, proj_dim: int = 32,
                 mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        c, *spatial = _channels_first(self.shape)
        conv, bn = (nn.Conv1d, nn.BatchNorm1d) if len(spatial) == 1 else (nn.Conv2d, nn.BatchNorm2d)
        k = 5 if len(spatial) == 1 and spatial[0] >= 16 else 3
        self.body = nn.Sequential(conv(c, width, k, padding=k // 2), bn(width), nn.ReLU(),
                                  conv(width, width, 3, padding=1), bn(width), nn.ReLU(),
                                  conv(width, width, 3, padding=1), bn(width), nn.ReLU())
        self.out = nn.Linear(2 * width, dim)
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, proj_dim))
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))
        self.losses: list[float] = []

    def standardize(self, x: Tensor) -> Tensor:
        """Rows reshaped to ``(B, C, *spatial)`` and standardised with the training data's mean and std."""
        x = x.reshape(len(x), *_channels_first(self.shape)).float()
        return (x - self.mean) / self.std

    def features(self, x: Tensor) -> Tensor:
        """Representation ``h = f(x)`` ``(B, dim)`` of already standardised ``x (B, C, *spatial)``."""
        h = self.body(x).flatten(2)  # (B, width, positions)
        return self.out(torch.cat([h.mean(-1), h.amax(-1)], dim=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.features(self.standardize(x))


def _check_args(epochs: Any, batch_size: Any, dim: Any, temperature: Any, lr: Any, augs: dict[str, Any]) -> None:
    check_positive_int(epochs, "epochs")
    check_positive_int(batch_size, "batch_size", minimum=2)
    check_positive_int(dim, "dim", minimum=2)
    for name, v in (("temperature", temperature), ("lr", lr)):
        if check_nonneg_float(v, name) == 0:
            raise ValueError(f"{name} must be > 0, got {v!r}")
    check_nonneg_float(augs["shift"], "shift", upper=0.5)
    check_nonneg_float(augs["scale"], "scale", upper=1.0, upper_open=True)
    check_nonneg_float(augs["noise"], "noise")
    check_nonneg_float(augs["mask"], "mask", upper=1.0, upper_open=True)


def train_contrastive(x: Any, epochs: int = 20, batch_size: int = 256, dim: int = 64, width: int = 32,
                      temperature: float = 0.5, lr: float = 1e-3, shift: float = 0.1, scale: float = 0.2,
                      noise: float = 0.1, mask: float = 0.1, seed: int = 0,
                      device: str | torch.device = "cpu") -> SSLEncoder:
    """Train an ``SSLEncoder`` on unlabeled ``x (N, *shape)`` with SimCLR's NT-Xent (Chen et al. 2020, Eq. 1).

    Adam at ``lr`` for ``epochs`` passes over a seeded shuffle in batches of ``batch_size`` (a last batch
    of one example is dropped); each batch gets two views from ``augment(shift, scale, noise, mask)``.
    Parameters, shuffles and views come from ``seed`` only (the global RNG is left as it was), so a run
    on CPU with the same thread count is repeatable. Returns the encoder in eval mode, without
    gradients, with the mean loss of every epoch in ``.losses``; ``embed(encoder, x)`` gives ``(N, dim)``.
    """
    augs = {"shift": shift, "scale": scale, "noise": noise, "mask": mask}
    _check_args(epochs, batch_size, dim, temperature, lr, augs)
    check_positive_int(width, "width")
    t = _check_x(x)
    n = len(t)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        enc = SSLEncoder(tuple(t.shape[1:]), dim=dim, width=width, mean=float(t.mean()),
                         std=max(float(t.std()), 1e-8))
    enc.to(device).train()
    opt = torch.optim.Adam(enc.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    bs = min(batch_size, n)
    for epoch in range(epochs):
        perm, total, count = torch.randperm(n, generator=gen), 0.0, 0
        for start in range(0, n, bs):
            idx = perm[start:start + bs]
            if len(idx) < 2:
                continue
            xb = enc.standardize(t[idx].to(device)).cpu()  # (B, C, *spatial)
            v1, v2 = (augment(xb, gen, **augs).to(device) for _ in range(2))
            loss = nt_xent(enc.head(enc.features(v1)), enc.head(enc.features(v2)), temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()) * len(idx), count + len(idx)
        enc.losses.append(total / count)
        log.info("train_contrastive epoch %d/%d: NT-Xent %.4f", epoch + 1, epochs, enc.losses[-1])
        if not math.isfinite(enc.losses[-1]):
            raise FloatingPointError(f"NT-Xent became {enc.losses[-1]} at epoch {epoch + 1}; lower lr (got {lr})")
    return enc.eval().requires_grad_(False).cpu()
