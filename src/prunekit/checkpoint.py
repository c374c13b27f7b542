"""A zoo checkpoint folder: ``model.safetensors`` + optional ``masks.safetensors`` + ``manifest.json`` (kind zoo).

The manifest names how to rebuild the model (a zoo name and its arguments), so no pickled object is
ever read. The folder is written with ``prunekit.io.atomic_dir``: an interrupted or failed write
leaves an existing checkpoint untouched, and one is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .io import atomic_dir, check_tensor_file, load_tensors, save_tensors, write_manifest
from .io import read_manifest as _read_manifest
from .masks import load_masks, save_masks

log = logging.getLogger(__name__)
KIND = "zoo"
WEIGHTS = "model.safetensors"
MASKS = "masks.safetensors"


def save_checkpoint(out_dir: str | os.PathLike, model: nn.Module, model_spec: dict[str, Any],
                    masks: dict[str, Tensor] | None = None, extra: dict[str, Any] | None = None, *,
                    overwrite: bool = False, also: Callable[[Path], None] | None = None) -> Path:
    """Write the checkpoint folder ``out_dir`` atomically; ``model_spec`` = ``{"name", "kwargs"}``.

    ``also(tmp)`` writes more files into the folder before it is published (e.g. a supermask's bits)."""
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        save_tensors(tmp / WEIGHTS, model.state_dict(), {"format": "prunekit", "kind": KIND})
        if masks:
            save_masks(tmp / MASKS, masks, {"model": model_spec})
        if also is not None:
            also(tmp)
        write_manifest(tmp, KIND, {**(extra or {}), "model": model_spec, "has_masks": bool(masks)})
    return Path(out_dir)


def read_zoo_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a zoo checkpoint folder (version 2, or the version-1 layout), its model spec checked."""
    man = _read_manifest(path, kinds=(KIND,))
    spec = man.get("model")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) \
            or not isinstance(spec.get("kwargs", {}), dict):
        raise ValueError(f"checkpoint manifest {Path(path) / 'manifest.json'}: \"model\" must be an object "
                         f"{{\"name\": str, \"kwargs\": {{...}}}}, got {spec!r:.200}")
    return man


read_manifest = read_zoo_manifest  # older name


def _meta_shapes(spec: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], torch.dtype]] | None:
    """The state-dict shapes of the model ``spec`` names, built without allocating (None if it cannot be)."""
    from .zoo import get_model

    try:
        with torch.device("meta"):
            net = get_model(spec["name"], **spec.get("kwargs", {}))
    except (ValueError, TypeError):  # bad model arguments: the zoo's message names them
        raise
    except Exception as e:  # noqa: BLE001 - a builder that needs real tensors: checked after the real build
        log.info("meta-device shape check of zoo model %r skipped (%s)", spec["name"], e)
        return None
    return {k: (tuple(v.shape), v.dtype) for k, v in net.state_dict().items()}


def load_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any], dict[str, Tensor] | None]:
    """Rebuild the model of a checkpoint folder; returns ``(model, manifest, masks or None)``.

    The weights' header is checked against the model's shapes before any tensor is read.
    """
    path = Path(path)
    manifest = read_zoo_manifest(path)
    spec = manifest["model"]
    expected = _meta_shapes(spec)
    if expected is not None:
        check_tensor_file(path / WEIGHTS, expected, what="checkpoint weights")
    from .zoo import get_model

    model = get_model(spec["name"], **spec.get("kwargs", {}))
    expected = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    check_tensor_file(path / WEIGHTS, expected, what="checkpoint weights")
    state, _ = load_tensors(path / WEIGHTS, "checkpoint weights")
    model.load_state_dict(state, strict=True)
    masks = load_masks(path / MASKS, model=model)[0] if manifest.get("has_masks") else None
    return model, manifest, masks
