"""A prunekit checkpoint folder: ``model.safetensors`` + optional ``masks.safetensors`` + ``manifest.json``.

The manifest names how to rebuild the model (a zoo name and its arguments), so no pickled object is
ever read. A checkpoint is written to a temporary folder beside its target and renamed at the end,
so an interrupted or failed write leaves an existing checkpoint untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .io import load_tensors, save_tensors, write_json
from .masks import load_masks, save_masks

FORMAT = "prunekit.checkpoint"
VERSION = 1


def save_checkpoint(out_dir: str | os.PathLike, model: nn.Module, model_spec: dict[str, Any],
                    masks: dict[str, Tensor] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint folder ``out_dir`` atomically; ``model_spec`` = ``{"name", "kwargs"}``."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        save_tensors(tmp / "model.safetensors", model.state_dict(), {"format": FORMAT})
        if masks:
            save_masks(tmp / "masks.safetensors", masks, {"model": model_spec})
        manifest = {"format": FORMAT, "version": VERSION, "model": model_spec, "has_masks": bool(masks),
                    **(extra or {})}
        write_json(tmp / "manifest.json", manifest)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a checkpoint folder; a missing folder or manifest is a clear error."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint not found: {path} (expected a folder written by `prunekit prune` or "
                                "`prunekit train`, holding manifest.json and model.safetensors)")
    mf = path / "manifest.json"
    if not mf.is_file():
        raise FileNotFoundError(f"checkpoint {path} has no manifest.json")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"checkpoint manifest {mf} is not valid JSON ({e})") from e
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{mf} is not a prunekit checkpoint manifest (format={manifest.get('format')!r})")
    if manifest.get("version") != VERSION:
        raise ValueError(f"{mf} has version {manifest.get('version')!r}; this prunekit reads version {VERSION}")
    return manifest


def load_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any], dict[str, Tensor] | None]:
    """Rebuild the model of a checkpoint folder; returns ``(model, manifest, masks or None)``."""
    from .zoo import get_model

    path = Path(path)
    manifest = read_manifest(path)
    spec = manifest["model"]
    state, _ = load_tensors(path / "model.safetensors", "checkpoint weights")
    model = get_model(spec["name"], **spec.get("kwargs", {}))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint weights {path / 'model.safetensors'} do not fit model {spec['name']!r}: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    masks = load_masks(path / "masks.safetensors")[0] if manifest.get("has_masks") else None
    return model, manifest, masks
