"""Data as the engines take it: a ``Dataset`` of ``(x, y)`` from a Dataset, an ``(X, y)`` pair or a split."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset


def as_dataset(data: Dataset | tuple[Tensor, Tensor] | Any) -> Dataset:
    """A ``Dataset`` of ``(x, y)`` from a Dataset, an ``(X, y)`` pair, or a zoo ``DataSplit``-like object."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = (torch.as_tensor(v) for v in data)
        if len(x) != len(y):
            raise ValueError(f"data: X has {len(x)} rows but y has {len(y)}")
        return TensorDataset(x, y)
    if hasattr(data, "x") and hasattr(data, "y"):
        return TensorDataset(torch.as_tensor(data.x), torch.as_tensor(data.y))
    raise TypeError(f"data must be a torch Dataset or an (X, y) pair of tensors, got {type(data).__name__}")
