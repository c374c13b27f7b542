"""User data sets from ``.npz`` (arrays ``X``/``y``) or ``.csv`` files, checked and split into a ``DataSplit``."""

from __future__ import annotations

import csv
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import check_fraction
from .datasets import DataSplit, stratified_split

log = logging.getLogger(__name__)

FORMATS = (".npz", ".csv")
X_KEYS = ("X", "x")
Y_KEYS = ("y", "Y")


def _existing_file(path: str | os.PathLike) -> Path:
    """``path`` as a ``Path``; a missing file raises ``FileNotFoundError`` naming it."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {str(p)!r} (expected an existing {' or '.join(FORMATS)} file)")
    return p


def check_xy(x: np.ndarray, y: np.ndarray, source: str) -> tuple[Tensor, Tensor]:
    """Validate features and labels, returning ``(x float32, y int64)`` tensors; errors name ``source``."""
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{source}: X must be numeric, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"{source}: X must have shape (examples, features...), got shape {x.shape}")
    if y.ndim != 1:
        raise ValueError(f"{source}: y must be 1-D (one label per example), got shape {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"{source}: X has {len(x)} rows but y has {len(y)} labels; they must be equal")
    if len(x) == 0:
        raise ValueError(f"{source}: the data set is empty")
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1) if x.dtype.kind == "f" else np.zeros(len(x), bool)
    if bad.any():
        raise ValueError(f"{source}: X has NaN or infinite values in {int(bad.sum())} rows "
                         f"(first at row {int(np.argmax(bad))}); clean or impute them first")
    return torch.as_tensor(x.astype(np.float32)), torch.as_tensor(_integer_labels(y, source))


def _integer_labels(y: np.ndarray, source: str) -> np.ndarray:
    """``y`` as int64 class labels >= 0; floats are accepted only when integral."""
    expected = "expected integer class labels 0..K-1"
    if y.dtype.kind == "b":
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or not (y == np.round(y)).all():
            odd = y[~np.isfinite(y) | (y != np.round(y))][0].item()
            raise ValueError(f"{source}: y holds a non-integer label {odd!r}; {expected}")
    elif y.dtype.kind not in "iu":
        raise ValueError(f"{source}: y has dtype {y.dtype} (e.g. {y.flat[0].item()!r}); {expected}")
    labels = y.astype(np.int64)
    if (labels < 0).any():
        raise ValueError(f"{source}: y holds a negative label {int(labels.min())}; {expected}")
    return labels


def load_npz(path: str | os.PathLike) -> tuple[Tensor, Tensor]:
    """``(X, y)`` from a ``.npz`` file holding arrays ``X`` (or ``x``) and ``y``; nothing is unpickled."""
    p = _existing_file(path)
    try:
        with np.load(p, allow_pickle=False) as f:
            keys = list(f.keys())
            kx = next((k for k in X_KEYS if k in keys), None)
            ky = next((k for k in Y_KEYS if k in keys), None)
            if kx is None or ky is None:
                raise KeyError(keys)
            x, y = f[kx], f[ky]
    except KeyError as e:
        raise ValueError(f"{str(p)!r}: expected arrays 'X' (or 'x') and 'y', found keys {e.args[0]}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{str(p)!r}: not a readable .npz of numeric arrays ({e})") from None
    return check_xy(x, y, str(p))


def _read_rows(p: Path) -> list[list[str]]:
    """All non-empty rows of a CSV file, each of the same length."""
    with open(p, newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{str(p)!r}: the CSV file has no rows")
    for i, r in enumerate(rows):
        if len(r) != len(rows[0]):
            raise ValueError(f"{str(p)!r}: row {i + 1} has {len(r)} columns but row 1 has {len(rows[0])}")
    return rows


def _is_number(cell: str) -> bool:
    """True when ``cell`` parses as a float."""
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _label_index(header: list[str] | None, width: int, label_column: str | int | None, source: str) -> int:
    """Index of the label column: ``label_column`` by name or position; default "label", else the last."""
    if label_column is None:
        return header.index("label") if header and "label" in header else width - 1
    if isinstance(label_column, str):
        if header is None:
            raise ValueError(f"{source}: label_column={label_column!r} needs a header row, but the first row is "
                             "all numbers; give the column's position as an int instead")
        if label_column not in header:
            raise ValueError(f"{source}: label_column={label_column!r} is not a column; columns: {header}")
        return header.index(label_column)
    if isinstance(label_column, bool) or not isinstance(label_column, int) or not -width <= label_column < width:
        raise ValueError(f"{source}: label_column must be a column name or a position in [-{width}, {width}), "
                         f"got {label_column!r}")
    return label_column % width


def _to_float(cells: list[list[str]], columns: list[str], source: str, first_row: int) -> np.ndarray:
    """A float array from string cells; a non-numeric cell raises naming its row and column."""
    try:
        return np.asarray(cells, dtype=np.float64).reshape(len(cells), -1)
    except ValueError:
        pass
    for i, row in enumerate(cells):
        for j, c in enumerate(row):
            if c.strip() and not _is_number(c):
                raise ValueError(f"{source}: row {first_row + i}, column {columns[j]!r} holds {c!r}; "
                                 "expected numbers")
    return np.asarray([[float(c) if c.strip() else np.nan for c in r] for r in cells]).reshape(len(cells), -1)


def load_csv(path: str | os.PathLike, label_column: str | int | None = None) -> tuple[Tensor, Tensor]:
    """``(X, y)`` from a CSV file; labels from ``label_column`` (default: "label" if named, else the last).

    A first row that is not all numbers is read as a header. Empty feature cells are NaN (an error).
    """
    p = _existing_file(path)
    rows = _read_rows(p)
    header = None if all(_is_number(c) for c in rows[0]) else [c.strip() for c in rows[0]]
    body = rows[1:] if header else rows
    if not body:
        raise ValueError(f"{str(p)!r}: the CSV file has a header but no data rows")
    width = len(rows[0])
    if width < 2:
        raise ValueError(f"{str(p)!r}: expected at least 2 columns (features and a label), got {width}")
    j = _label_index(header, width, label_column, str(p))
    names = header or [str(k) for k in range(width)]
    feat_cols = [k for k in range(width) if k != j]
    x = _to_float([[r[k] for k in feat_cols] for r in body], [names[k] for k in feat_cols], str(p),
                  2 if header else 1)
    labels = [r[j].strip() for r in body]
    y = np.asarray([float(c) for c in labels]) if all(_is_number(c) for c in labels) else np.asarray(labels)
    return check_xy(x, y, f"{str(p)!r} (label column {names[j]!r})")


def load_user_data(
    path: str | os.PathLike, test_fraction: float = 0.2, seed: int = 0, label_column: str | int | None = None
) -> DataSplit:
    """A stratified ``DataSplit`` of a user's ``.npz`` or ``.csv`` file (``label_column`` for CSV only)."""
    check_fraction(test_fraction, "test_fraction", high_closed=False)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    p = _existing_file(path)
    fmt = p.suffix.lower()
    if fmt not in FORMATS:
        raise ValueError(f"{str(p)!r}: unsupported file type {fmt!r}; accepted: {', '.join(FORMATS)}")
    if fmt == ".npz" and label_column is not None:
        raise ValueError("label_column applies to .csv files only; a .npz names its labels 'y'")
    x, y = load_npz(p) if fmt == ".npz" else load_csv(p, label_column)
    tr, te = stratified_split(y, test_fraction, seed)
    meta: dict[str, Any] = {"path": str(p), "format": fmt[1:], "test_fraction": test_fraction, "seed": seed}
    split = DataSplit(x[tr], y[tr], x[te], y[te], num_classes=int(y.max()) + 1, name=p.stem, meta=meta)
    log.info("loaded %r from %s", split, p)
    return split
