"""Fixtures of the CLI tests: a small MNIST-1D split, and the bench / data fixtures reused from their packages."""

from __future__ import annotations

import numpy as np
import pytest

import prunekit.zoo
from bench.conftest import make_sweep, read_only  # noqa: F401  (fixtures)
from data.conftest import blob_data, dup_embeddings, make_mlp  # noqa: F401  (fixtures)

_SMALL: dict = {}


@pytest.fixture
def small_data(monkeypatch):
    """1000 MNIST-1D examples for every zoo data set name, generated once (the CLI's wiring is under test)."""
    real = prunekit.zoo.get_dataset
    if "split" not in _SMALL:
        _SMALL["split"] = real("mnist1d", num_samples=1000)
    monkeypatch.setattr(prunekit.zoo, "get_dataset", lambda name, **kw: _SMALL["split"])


@pytest.fixture
def signals_npz(tmp_path):
    """A local data file for cnn1d: 120 random (40,) signals, 10 classes."""
    rng = np.random.default_rng(0)
    path = tmp_path / "signals.npz"
    np.savez(path, X=rng.normal(size=(120, 40)).astype(np.float32), y=np.arange(120) % 10)
    return path
