"""Dirichlet client splits: every example once, non-IID by alpha, bad input named."""

import pytest
import torch

from prunekit.federated.data import client_splits, dirichlet_split


def _labels(per_class: int = 20, classes: int = 4) -> torch.Tensor:
    return torch.arange(classes).repeat_interleave(per_class)


def test_partition_covers_every_example_once():
    y = _labels()
    parts = dirichlet_split(y, 5, 0.5, seed=0)
    allidx = torch.cat(parts)
    assert len(parts) == 5 and torch.equal(torch.sort(allidx).values, torch.arange(len(y)))
    assert all(torch.equal(a, b) for a, b in zip(parts, dirichlet_split(y, 5, 0.5, seed=0)))  # seeded


def test_small_alpha_is_more_skewed_than_large():
    y = _labels(200, 10)

    def mean_classes(alpha: float) -> float:
        parts = dirichlet_split(y, 10, alpha, seed=1, min_examples=1)
        return sum(len(torch.unique(y[p])) for p in parts) / 10

    assert mean_classes(0.1) < mean_classes(100.0) == 10.0


def test_client_splits_train_and_test_disjoint():
    y = _labels()
    for s in client_splits(y, 4, 1.0, seed=0):
        assert len(s.test) >= 1 and len(s.train) >= 1
        assert not set(s.train.tolist()) & set(s.test.tolist())


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan")])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_split(_labels(), 4, alpha)


def test_more_clients_than_examples_per_class():
    with pytest.raises(ValueError, match="more than the examples per class allow: the smallest class has 20"):
        dirichlet_split(_labels(), 21, 0.5)
