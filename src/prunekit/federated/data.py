"""Non-IID client splits: each class is shared among clients by Dirichlet(alpha) proportions.

Hsu et al. 2019 ("Measuring the Effects of Non-Identical Data Distribution for Federated Visual
Classification"): for class c, proportions p_c ~ Dir(alpha * 1_N) over the N clients; client i gets
a p_c,i share of class c's examples. Small alpha: each client sees few classes; large alpha: near IID.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class ClientSplit:
    """One client's examples: indices into the pooled data set, for its own training and test."""

    train: Tensor  # (n_train,) long
    test: Tensor  # (n_test,) long


def check_split_args(labels: Tensor, clients: int, alpha: float) -> None:
    """``alpha`` > 0, ``clients`` >= 1 and no more clients than the smallest class has examples."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"--alpha (Dirichlet concentration) must be a number > 0, got {alpha!r}")
    if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
        raise ValueError(f"--clients must be a positive integer, got {clients!r}")
    counts = torch.bincount(labels)
    smallest = int(counts[counts > 0].min())
    if clients > smallest:
        raise ValueError(f"--clients {clients} is more than the examples per class allow: the smallest class has "
                         f"{smallest} examples, so at most {smallest} clients can each be offered one")


def dirichlet_split(labels: Tensor, clients: int, alpha: float, seed: int = 0, min_examples: int = 4,
                    tries: int = 100) -> list[Tensor]:
    """Indices of each client's examples, classes shared by Dirichlet(alpha); redrawn until every client has
    ``min_examples`` (an error after ``tries`` draws names the arguments to change)."""
    check_split_args(labels, clients, alpha)
    rng = np.random.default_rng(seed)
    y = labels.cpu().numpy()
    for _ in range(tries):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            p = rng.dirichlet(np.full(clients, float(alpha)))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
            for i, chunk in enumerate(np.split(idx, cuts)):
                parts[i].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_examples:
            return [torch.as_tensor(sorted(p), dtype=torch.long) for p in parts]
    raise ValueError(f"Dirichlet(alpha={alpha}) over {clients} clients left a client with fewer than {min_examples} "
                     f"examples in {tries} draws: use fewer --clients or a larger --alpha")


def client_splits(labels: Tensor, clients: int, alpha: float, seed: int = 0,
                  test_fraction: float = 0.2) -> list[ClientSplit]:
    """Dirichlet client partitions, each cut into its own train and test part (``test_fraction``, >= 1 each)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    g = torch.Generator().manual_seed(seed + 1)
    out = []
    for idx in dirichlet_split(labels, clients, alpha, seed):
        perm = idx[torch.randperm(len(idx), generator=g)]
        n_test = min(len(idx) - 1, max(1, round(test_fraction * len(idx))))
        out.append(ClientSplit(torch.sort(perm[n_test:]).values, torch.sort(perm[:n_test]).values))
    return out
