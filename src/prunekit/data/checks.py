"""Input checks for data pruning: each names the argument and what it accepts, before any work is done."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib import format as npy_format
from torch import Tensor

from ..errors import check_fraction


def keep_fraction_arg(value: Any, name: str = "keep_fraction") -> float:
    """``value`` as a float in (0, 1], or a ``ValueError`` naming ``name``."""
    return check_fraction(value, name)


def keep_count(num_examples: int, keep_fraction: float) -> int:
    """Examples kept at ``keep_fraction``: ``round(keep_fraction * num_examples)``, at least 1."""
    return max(1, int(round(keep_fraction * num_examples)))


def as_scores(scores: Any, name: str = "scores") -> Tensor:
    """A 1-D float64 tensor of finite scores; NaN, inf or a wrong shape raise naming ``name``."""
    if isinstance(scores, np.ndarray) or isinstance(scores, (list, tuple)):
        scores = torch.as_tensor(np.asarray(scores))
    if not torch.is_tensor(scores):
        raise TypeError(f"{name} must be a 1-D tensor or array of numbers, got {type(scores).__name__}")
    if scores.dim() != 1 or scores.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array (one score per example), "
                         f"got shape {tuple(scores.shape)}")
    if scores.dtype == torch.bool or scores.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {scores.dtype}")
    s = scores.detach().to("cpu", torch.float64)
    bad = ~torch.isfinite(s)
    if bad.any():
        where = torch.nonzero(bad).flatten()[:5].tolist()
        kind = "NaN" if torch.isnan(s).any() else "infinite values"
        raise ValueError(f"{name} contain {kind} ({int(bad.sum())} of {s.numel()}, e.g. at positions {where})")
    return s


def as_labels(labels: Any, num_examples: int, num_classes: int | None = None, name: str = "labels") -> Tensor:
    """A 1-D int64 tensor of class labels in ``[0, num_classes)``, one per example."""
    t = torch.as_tensor(np.asarray(labels)) if not torch.is_tensor(labels) else labels.detach().cpu()
    if t.dim() != 1 or t.numel() != num_examples:
        raise ValueError(f"{name} must be 1-D with one label per example ({num_examples}), got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must be integers (class indices), got dtype {t.dtype}")
    t = t.long()
    bad = t < 0
    if num_classes is not None:
        bad |= t >= num_classes
    if bad.any():
        accepted = f"[0, {num_classes})" if num_classes is not None else "non-negative integers"
        raise ValueError(f"{name} must be class indices in {accepted}, got values {t[bad][:5].tolist()}")
    return t


def check_same_length(n: int, other: Any, name: str, expected: str = "scores") -> None:
    """Raise unless ``len(other) == n``."""
    if len(other) != n:
        raise ValueError(f"{name} has {len(other)} entries but {expected} has {n}; they must match")


def check_embeddings(emb: Any, dim: int | None = None, name: str = "embeddings") -> tuple[int, int]:
    """Shape ``(N, d)`` of a 2-D float array-like, checking ``d == dim`` when given."""
    shape = tuple(getattr(emb, "shape", ()))
    if len(shape) != 2 or shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (N, d), got shape {shape}")
    dt = getattr(emb, "dtype", None)
    kind = np.dtype(dt).kind if isinstance(dt, np.dtype) else ("f" if torch.is_tensor(emb) and emb.is_floating_point()
                                                                else "?")
    if kind != "f":
        raise TypeError(f"{name} must be floating point, got dtype {dt}")
    if dim is not None and shape[1] != dim:
        raise ValueError(f"{name} must have width {dim} (the encoder's / centroids' dimension), got width {shape[1]}")
    return int(shape[0]), int(shape[1])


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` or a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_nonneg_float(value: Any, name: str, upper: float | None = None, upper_open: bool = False) -> float:
    """``value`` as a float in ``[0, upper]`` (or ``[0, upper)``), else a ``ValueError`` naming ``name``."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.floating)) and np.isfinite(value)
    v = float(value) if ok else -1.0
    if not ok or v < 0 or (upper is not None and (v >= upper if upper_open else v > upper)):
        rng = f"[0, {upper}{')' if upper_open else ']'}" if upper is not None else "[0, inf)"
        raise ValueError(f"{name} must be a number in {rng}, got {value!r}")
    return v


NPY_MAGIC = b"\x93NUMPY"


def open_npy(path: str | os.PathLike, name: str = "array", ndim: int | None = None, mmap: bool = False) -> np.ndarray:
    """A ``.npy`` file as an array (memory-mapped with ``mmap``), its header checked before any data is read.

    Missing, empty, non-``.npy`` (e.g. a text file named ``.npy``), pickled-object or wrong-rank files raise
    a ``FileNotFoundError`` / ``ValueError`` naming ``name`` and the file; nothing is ever unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name} file {str(path)!r} does not exist (expected a .npy array)")
    if path.stat().st_size == 0:
        raise ValueError(f"{name} file {str(path)!r} is empty (0 bytes); expected a .npy array (numpy.save)")
    with open(path, "rb") as f:
        if f.read(len(NPY_MAGIC)) != NPY_MAGIC:
            raise ValueError(f"{name} file {str(path)!r} is not a NumPy .npy file (no .npy header); write it with "
                             "numpy.save")
        f.seek(0)
        try:
            version = npy_format.read_magic(f)
            read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
            shape, _, dtype = read(f)  # the header only: no data is read
        except ValueError as e:
            raise ValueError(f"{name} file {str(path)!r} has a damaged .npy header ({e})") from e
    if dtype.hasobject:
        raise ValueError(f"{name} file {str(path)!r} holds Python objects (dtype {dtype}); prunekit never unpickles: "
                         "save a numeric array")
    if ndim is not None and len(shape) != ndim:
        raise ValueError(f"{name} file {str(path)!r} must hold a {ndim}-D array, got shape {shape}")
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def check_finite_rows(chunks: Any, name: str = "embeddings") -> None:
    """Raise naming ``name`` and the first bad rows if any ``(start, rows)`` chunk holds NaN or Inf."""
    for start, rows in chunks:
        bad = ~np.isfinite(rows).all(axis=1)
        if bad.any():
            where = (np.flatnonzero(bad)[:5] + start).tolist()
            raise ValueError(f"{name}: NaN or infinite values in {int(bad.sum())} row(s) of a chunk (e.g. rows "
                             f"{where}); clean or drop those rows first")
