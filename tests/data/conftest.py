"""Fixtures for the data-pruning tests: one torch thread (the box is shared), tiny data and models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def one_thread():
    """Run each test on one intra-op thread and restore the setting after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TinyMLP(nn.Module):
    """A 2-layer perceptron for ``(B, d)`` inputs."""

    def __init__(self, d: int = 8, hidden: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def blobs(n: int = 300, d: int = 8, classes: int = 3, seed: int = 0, spread: float = 0.6):
    """Gaussian blobs: ``(x (n, d) float32, y (n,) int64)``, well separated."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, d, generator=g) * 3
    y = torch.arange(n) % classes
    x = centers[y] + spread * torch.randn(n, d, generator=g)
    return x.float(), y.long()


@pytest.fixture
def blob_data():
    return blobs()


def near_duplicates(n_base: int = 1500, n_dup: int = 150, d: int = 32, noise: float = 0.01, seed: int = 0):
    """Clustered unit embeddings with ``n_dup`` jittered copies; returns ``(x, copy_of)`` (-1 for originals)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((20, d))
    base = centers[rng.integers(0, 20, n_base)] + 0.5 * rng.standard_normal((n_base, d))
    src = rng.choice(n_base, n_dup, replace=False)
    dups = base[src] + noise * rng.standard_normal((n_dup, d))
    x = np.concatenate([base, dups]).astype(np.float32)
    copy_of = np.r_[np.full(n_base, -1), src]
    return x, copy_of


@pytest.fixture
def make_mlp():
    """Factory ``make_mlp(seed, d=8, classes=3)`` of seeded ``TinyMLP`` models."""

    def make(seed: int = 0, d: int = 8, classes: int = 3) -> TinyMLP:
        torch.manual_seed(seed)
        return TinyMLP(d, 16, classes)

    return make


@pytest.fixture
def make_blobs():
    """The ``blobs`` generator as a fixture."""
    return blobs


@pytest.fixture
def dup_embeddings():
    """``(x, copy_of)`` from ``near_duplicates()``."""
    return near_duplicates()
