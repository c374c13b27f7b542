"""Atomic file writes and checked safetensors reads, shared by every stage that saves something."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomic text write (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomic JSON write, indented and key-sorted."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_tensors(path: str | os.PathLike, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Save tensors as safetensors, atomically (contiguous CPU copies)."""
    from safetensors.torch import save

    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write_bytes(path, save(flat, metadata=metadata))


def load_tensors(path: str | os.PathLike, what: str = "safetensors file") -> tuple[dict[str, Tensor], dict[str, str]]:
    """Load a safetensors file and its metadata; a missing or corrupt file is a clear error naming it."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path} (expected a .safetensors file)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{what} {path} is not a valid safetensors file ({e}); re-create it") from e
    return tensors, meta


def check_writable(path: str | os.PathLike, what: str) -> Path:
    """Raise before any work if ``path`` (or its folder, for a new file) cannot be written."""
    path = Path(path)
    target = path if path.exists() else next((p for p in [path.parent, *path.parents] if p.exists()), Path("."))
    if not os.access(target, os.W_OK):
        raise PermissionError(f"{what} {path} is not writable (check its permissions or choose another path)")
    return path


def torch_load_safe(path: str | os.PathLike) -> Any:
    """``torch.load`` with ``weights_only=True``: never unpickles arbitrary objects."""
    return torch.load(path, map_location="cpu", weights_only=True)
