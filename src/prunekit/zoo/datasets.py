"""Built-in data sets that need no download: MNIST-1D (generated), scikit-learn digits (bundled)."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import check_fraction
from ..registry import Registry

log = logging.getLogger(__name__)

DATASETS = Registry("dataset")


@dataclass
class DataSplit:
    """A classification data set split into train and test tensors (x float32, y int64 in [0, num_classes))."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    name: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def train(self) -> tuple[Tensor, Tensor]:
        """The ``(x, y)`` training pair, as ``prunekit.training.fit`` takes it."""
        return self.x_train, self.y_train

    @property
    def test(self) -> tuple[Tensor, Tensor]:
        """The ``(x, y)`` test pair."""
        return self.x_test, self.y_test

    def __repr__(self) -> str:
        return (f"DataSplit({self.name!r}, train={tuple(self.x_train.shape)}, test={tuple(self.x_test.shape)}, "
                f"num_classes={self.num_classes})")


def _check_int(value: Any, name: str, low: int) -> int:
    """Return ``value`` if it is an int >= ``low``, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _check_nonneg(value: Any, name: str) -> float:
    """Return ``value`` as a float >= 0, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


class _GlobalRngGuard:
    """Restores Python's and NumPy's global random states on exit (mnist1d seeds them globally)."""

    def __enter__(self) -> None:
        self.py, self.np = random.getstate(), np.random.get_state()

    def __exit__(self, *exc: object) -> None:
        random.setstate(self.py)
        np.random.set_state(self.np)


@DATASETS.register("mnist1d")
def mnist1d(num_samples: int = 5000, train_split: float = 0.8, seed: int = 42, noise: float = 1.0) -> DataSplit:
    """MNIST-1D (Greydanus 2020), generated in memory by ``mnist1d.data.make_dataset`` (never downloaded).

    ``num_samples`` is rounded down to a multiple of 10 (equal classes); the default 5000 with
    ``train_split=0.8`` and ``seed=42`` is the standard 4000/1000 split. ``noise`` scales both of the
    generator's noise terms (correlated 0.25 and i.i.d. 0.02): 0 gives clean signals.
    """
    _check_int(num_samples, "num_samples", 10)
    check_fraction(train_split, "train_split", high_closed=False)
    _check_int(seed, "seed", 0)
    noise = _check_nonneg(noise, "noise")
    from mnist1d.data import get_dataset_args, make_dataset  # lazy: optional dependency (extra "zoo")

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = num_samples, train_split, seed
    args.corr_noise_scale *= noise
    args.iid_noise_scale *= noise
    with _GlobalRngGuard():
        d = make_dataset(args)
    split = DataSplit(
        torch.as_tensor(d["x"], dtype=torch.float32), torch.as_tensor(d["y"], dtype=torch.int64),
        torch.as_tensor(d["x_test"], dtype=torch.float32), torch.as_tensor(d["y_test"], dtype=torch.int64),
        num_classes=10, name="mnist1d",
        meta={"num_samples": num_samples, "train_split": train_split, "seed": seed, "noise": noise,
              "source": "mnist1d.data.make_dataset"},
    )
    log.debug("built %r", split)
    return split


def stratified_split(y: Tensor, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Train and test indices (sorted), each class split ``1 - test_fraction`` / ``test_fraction``.

    Every class with at least two examples keeps at least one on each side.
    """
    check_fraction(test_fraction, "test_fraction", high_closed=False)
    gen = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_test = round(len(idx) * test_fraction)
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(test)).values


@DATASETS.register("digits")
def digits(test_fraction: float = 0.25, seed: int = 0, flat: bool = False) -> DataSplit:
    """scikit-learn's bundled 8x8 digits (1797 images), scaled to [0, 1]; ``(B, 1, 8, 8)`` or ``(B, 64)``.

    The split is stratified by class and fixed by ``seed``.
    """
    check_fraction(test_fraction, "test_fraction", high_closed=False)
    _check_int(seed, "seed", 0)
    if not isinstance(flat, bool):
        raise ValueError(f"flat must be True or False, got {flat!r}")
    from sklearn.datasets import load_digits  # lazy: optional dependency (extra "zoo")

    bunch = load_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float32) / 16.0  # (1797, 64), pixel values 0..16
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    if not flat:
        x = x.view(-1, 1, 8, 8)
    tr, te = stratified_split(y, test_fraction, seed)
    return DataSplit(x[tr], y[tr], x[te], y[te], num_classes=10, name="digits",
                     meta={"test_fraction": test_fraction, "seed": seed, "flat": flat,
                           "source": "sklearn.datasets.load_digits"})


@DATASETS.register("stdlib-text")
def stdlib_text(max_docs: int | None = None, min_chars: int = 200) -> list[str]:
    """Text documents from Python's own standard-library sources (see ``prunekit.zoo.text``)."""
    from .text import stdlib_corpus  # lazy: written by the LLM area

    return stdlib_corpus(max_docs=max_docs, min_chars=min_chars)


def get_dataset(name: str, **kwargs: Any) -> Any:
    """Build the registered data set ``name`` (``mnist1d``, ``digits``, ``stdlib-text``) with ``kwargs``."""
    return DATASETS.get(name)(**kwargs)
