"""Kept indices as ``.npy`` plus a manifest (prunekit format 2, kind ``data-selection``), written as one
folder with ``prunekit.io.atomic_dir``; and their checked loading (version-1 folders too)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..io import atomic_dir, atomic_write, read_manifest, write_json, write_manifest
from ..io import read_json as _read_json

__all__ = ["atomic_write", "write_json"]  # re-exported for older imports: both live in prunekit.io

MANIFEST_VERSION = 1  # of the data side files (scores, dynamics, schedules); selections use prunekit.io's
INDICES_FILE = "kept.npy"
MANIFEST_FILE = "manifest.json"
KIND = "data-selection"


def write_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as ``.npy`` (no pickles), atomically."""
    arr = np.ascontiguousarray(array)
    return atomic_write(path, lambda f: np.save(f, arr, allow_pickle=False))


def read_versioned_json(path: str | os.PathLike, name: str = "manifest") -> dict[str, Any]:
    """Read a JSON object with ``"version": 1``, or raise naming ``name`` and the file."""
    try:
        obj = _read_json(path, name)
    except FileNotFoundError:
        raise ValueError(f"{name} {str(path)!r} does not exist") from None
    if obj.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{name} {str(path)!r} must be a JSON object with \"version\": {MANIFEST_VERSION}")
    return obj


read_json = read_versioned_json  # older name


def score_summary(scores: Tensor | np.ndarray) -> dict[str, float]:
    """Min, max, mean, std and quartiles of a score vector (for manifests)."""
    s = np.asarray(scores.detach().cpu() if torch.is_tensor(scores) else scores, dtype=np.float64)
    q = np.quantile(s, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {"count": int(s.size), "min": float(s.min()), "max": float(s.max()), "mean": float(s.mean()),
            "std": float(s.std()), "q10": float(q[0]), "q25": float(q[1]), "median": float(q[2]),
            "q75": float(q[3]), "q90": float(q[4])}


def check_indices(indices: Any, num_examples: int, name: str = "indices") -> np.ndarray:
    """Kept indices as a sorted, unique int64 array within ``[0, num_examples)``."""
    idx = np.asarray(indices.cpu() if torch.is_tensor(indices) else indices)
    if idx.ndim != 1 or idx.dtype.kind not in "iu":
        raise ValueError(f"{name} must be a 1-D array of integers, got shape {idx.shape} dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= num_examples):
        raise ValueError(f"{name} must lie in [0, {num_examples}) (the data set size), got range "
                         f"[{idx.min()}, {idx.max()}]")
    if idx.size > 1 and not (np.diff(idx) > 0).all():
        raise ValueError(f"{name} must be sorted and unique")
    return idx


def save_selection(
    out_dir: str | os.PathLike,
    indices: Tensor | np.ndarray,
    *,
    num_examples: int,
    method: str,
    params: dict[str, Any] | None = None,
    seed: int | None = None,
    scores: Tensor | np.ndarray | None = None,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``kept.npy`` and ``manifest.json`` as the folder ``out_dir``; checks everything before writing."""
    idx = check_indices(indices, num_examples)
    if scores is not None and len(scores) != num_examples:
        raise ValueError(f"scores has {len(scores)} entries but num_examples is {num_examples}; they must match")
    body = {
        **(extra or {}), "method": method, "params": params or {},
        "seed": seed, "num_examples": int(num_examples), "num_kept": int(idx.size),
        "keep_fraction": idx.size / num_examples, "indices_file": INDICES_FILE,
        "score_summary": score_summary(scores) if scores is not None else None,
    }
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        write_npy(tmp / INDICES_FILE, idx)
        write_manifest(tmp, KIND, body)
    return Path(out_dir)


def _npy_shape(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``.npy`` file from its header only."""
    if not path.is_file():
        raise FileNotFoundError(f"kept indices file not found: {path}")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
    except (ValueError, OSError) as e:
        raise ValueError(f"kept indices file {path} is not a valid .npy file ({e}); re-create it") from None
    return tuple(shape), dtype


def load_selection(out_dir: str | os.PathLike, num_examples: int | None = None) -> tuple[Tensor, dict[str, Any]]:
    """Read kept indices and their manifest; ``num_examples`` must match the manifest's data set size."""
    out = Path(out_dir)
    manifest = read_manifest(out, kinds=(KIND,), what="data selection")
    where = str(out / MANIFEST_FILE)
    n, kept, name = manifest.get("num_examples"), manifest.get("num_kept"), manifest.get("indices_file", INDICES_FILE)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (n, kept)) or kept > n:
        raise ValueError(f"manifest {where!r}: num_examples and num_kept must be integers with "
                         f"0 <= num_kept <= num_examples, got {n!r} and {kept!r}")
    if num_examples is not None and n != num_examples:
        raise ValueError(f"manifest {where!r} was made for a data set of {n} examples, "
                         f"but this data set has {num_examples}; select again for this data set")
    if not isinstance(name, str) or Path(name).name != name:
        raise ValueError(f"manifest {where!r}: indices_file must be a file name in the folder, got {name!r:.100}")
    shape, _ = _npy_shape(out / name)
    if shape != (kept,):
        raise ValueError(f"{str(out)!r}: manifest says {kept} kept but {name} holds shape {list(shape)}")
    idx = np.load(out / name, allow_pickle=False)
    idx = check_indices(idx, int(n), name=f"indices in {str(out)!r}")
    return torch.from_numpy(idx), manifest
