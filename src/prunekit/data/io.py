"""Kept indices as ``.npy`` plus a versioned JSON manifest, written atomically; and their checked loading."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor

from ..io import atomic_write_bytes

MANIFEST_VERSION = 1
INDICES_FILE = "kept.npy"
MANIFEST_FILE = "manifest.json"


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on an in-memory buffer, then write it atomically (``prunekit.io.atomic_write_bytes``)."""
    buf = io.BytesIO()
    write(buf)
    return atomic_write_bytes(path, buf.getvalue())


def write_json(path: str | os.PathLike, obj: dict[str, Any]) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=_jsonable).encode()
    return atomic_write(path, lambda f: f.write(text))


def write_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as ``.npy`` (no pickles), atomically."""
    arr = np.ascontiguousarray(array)
    return atomic_write(path, lambda f: np.save(f, arr, allow_pickle=False))


def read_json(path: str | os.PathLike, name: str = "manifest") -> dict[str, Any]:
    """Read a JSON object with a ``version`` key, or raise naming ``name``."""
    try:
        obj = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"{name} {str(path)!r} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{name} {str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(obj, dict) or obj.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{name} {str(path)!r} must be a JSON object with \"version\": {MANIFEST_VERSION}")
    return obj


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
) -> Path:
    """Write ``kept.npy`` and ``manifest.json`` into ``out_dir``; checks everything before writing."""
    idx = check_indices(indices, num_examples)
    if scores is not None and len(scores) != num_examples:
        raise ValueError(f"scores has {len(scores)} entries but num_examples is {num_examples}; they must match")
    manifest = {
        "version": MANIFEST_VERSION, "kind": "data-selection", "method": method, "params": params or {},
        "seed": seed, "num_examples": int(num_examples), "num_kept": int(idx.size),
        "keep_fraction": idx.size / num_examples, "indices_file": INDICES_FILE,
        "score_summary": score_summary(scores) if scores is not None else None, **(extra or {}),
    }
    out = Path(out_dir)
    write_npy(out / INDICES_FILE, idx)
    write_json(out / MANIFEST_FILE, manifest)
    return out


def load_selection(out_dir: str | os.PathLike, num_examples: int | None = None) -> tuple[Tensor, dict[str, Any]]:
    """Read kept indices and their manifest; ``num_examples`` must match the manifest's data set size."""
    out = Path(out_dir)
    manifest = read_json(out / MANIFEST_FILE)
    n = manifest.get("num_examples")
    if num_examples is not None and n != num_examples:
        raise ValueError(f"manifest {str(out / MANIFEST_FILE)!r} was made for a data set of {n} examples, "
                         f"but this data set has {num_examples}; select again for this data set")
    idx = np.load(out / manifest.get("indices_file", INDICES_FILE), allow_pickle=False)
    idx = check_indices(idx, int(n), name=f"indices in {str(out)!r}")
    if idx.size != manifest.get("num_kept"):
        raise ValueError(f"{str(out)!r}: manifest says {manifest.get('num_kept')} kept but the file holds {idx.size}")
    return torch.from_numpy(idx), manifest


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, (np.ndarray, Tensor)):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"cannot write {type(v).__name__} to JSON")
