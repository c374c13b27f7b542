"""Save and load pruned transformers: plain ``save_pretrained`` weights, a bit-packed mask side-car
(``prunekit_masks.safetensors``, one uint8 tensor per layer, 8 mask bits per byte) and a JSON
manifest (``manifest.json``, prunekit format 2, kind ``hf``: method, config, per-layer sparsity,
calibration, protocol). Folders of the version-1 layout (``prunekit_manifest.json``) still load.

``config.json`` is left exactly as transformers writes it: no extra key, so other tools load the
model as a plain dense checkpoint. The whole folder is written with ``prunekit.io.atomic_dir``, so
an interrupted save leaves nothing half-written and an existing folder is replaced only with
``overwrite``, crash-safely.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..io import (
    MANIFEST,
    atomic_dir,
    check_out,
    check_tensor_file,
    load_tensors,
    read_manifest,
    save_tensors,
    write_manifest,
)

log = logging.getLogger(__name__)

MASKS_FILE = "prunekit_masks.safetensors"
MANIFEST_FILE = MANIFEST
KIND = "hf"
LEGACY_FORMAT = "prunekit.llm-masks"  # version 1: the side-car's metadata and ``prunekit_manifest.json``
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def pack_mask(mask: Tensor) -> Tensor:
    """A bool mask as uint8 bytes, 8 entries per byte (big-endian bit order), flattened."""
    if mask.dtype != torch.bool:
        raise ValueError(f"masks must be torch.bool (True = keep), got {mask.dtype}")
    return torch.from_numpy(np.packbits(mask.detach().cpu().reshape(-1).numpy()))


def unpack_mask(packed: Tensor, shape: list[int] | tuple[int, ...]) -> Tensor:
    """Inverse of ``pack_mask``."""
    n = math.prod(shape)
    if packed.numel() != (n + 7) // 8:
        raise ValueError(f"packed mask has {packed.numel()} bytes, expected {(n + 7) // 8} for shape {list(shape)}")
    bits = np.unpackbits(packed.numpy(), count=n)
    return torch.from_numpy(bits.astype(bool)).reshape(tuple(shape))


def _ones(bits: Tensor) -> int:
    """Number of set bits (kept weights) in a packed mask."""
    return int(np.unpackbits(bits.numpy()).sum())


def _check_out(out_dir: Path, overwrite: bool) -> None:
    """Deprecated: use ``prunekit.io.check_out``."""
    check_out(out_dir, overwrite=overwrite)


def save_hf_pruned(model: nn.Module, out_dir: str | Path, masks: dict[str, Any], manifest: dict[str, Any],
                   tokenizer: Any = None, overwrite: bool = False,
                   source_dir: str | Path | None = None) -> Path:
    """Write ``model`` with ``save_pretrained``, the bit-packed ``masks`` and the ``manifest``, atomically.

    ``masks`` maps parameter names to bool masks or to already packed ``(uint8 bits, shape)`` pairs.
    With ``source_dir`` every saved tensor is compared with the source folder's before anything is
    moved into place (:func:`prunekit.calibrate.verify.compare_saved`: pruned or bit-identical, else
    ``SavedModelMismatch``), and the result goes into the manifest's ``tensors`` entry.
    """
    out = Path(out_dir)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        packed = {k: m if isinstance(m, tuple) else (pack_mask(m), list(m.shape)) for k, m in masks.items()}
        save_tensors(tmp / MASKS_FILE, {k: bits for k, (bits, _) in packed.items()},
                     {"format": "prunekit", "version": "2", "kind": KIND})
        layers = {k: {"shape": list(shape), "sparsity": 1.0 - _ones(bits) / math.prod(shape)}
                  for k, (bits, shape) in packed.items()}
        for k, extra in manifest.get("layers", {}).items():
            layers.setdefault(k, {}).update(extra)
        if source_dir is not None:
            from .verify import compare_saved, file_masks

            on_disk, renamed = file_masks(model, packed)
            not_saved = {n for n, _ in model.named_buffers()} - set(model.state_dict())
            manifest = {**manifest, "tensors": {**compare_saved(source_dir, tmp, on_disk, not_saved),
                                                "renamed": renamed}}
        body = {k: v for k, v in manifest.items() if k not in ("format", "version", "kind")}
        write_manifest(tmp, KIND, {**body, "layers": layers})
    return out


def save_pruned(*args: Any, **kwargs: Any) -> Path:
    """Deprecated alias of :func:`save_hf_pruned`."""
    return save_hf_pruned(*args, **kwargs)


def load_manifest(model_dir: str | Path) -> dict[str, Any]:
    """The prunekit manifest of a saved pruned model (kind ``hf``; version-1 folders too)."""
    man = read_manifest(model_dir, kinds=(KIND,), what="pruned model")
    if not isinstance(man.get("layers", {}), dict):
        raise ValueError(f"{Path(model_dir) / man.get('manifest_file', MANIFEST)}: \"layers\" must be an object")
    return man


def _mask_shapes(man: dict[str, Any], where: Path) -> dict[str, list[int]]:
    """Each layer's mask shape from the manifest: lists of non-negative integers, or an error naming the file."""
    shapes = {}
    for k, d in man.get("layers", {}).items():
        shape = d.get("shape") if isinstance(d, dict) else None
        if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                  for n in shape):
            raise ValueError(f"{where}: layer {k!r} has shape {shape!r:.100}; expected a list of integers")
        shapes[k] = shape
    return shapes


def load_hf_masks(model_dir: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The bool masks (True = keep) and the manifest saved next to a pruned model.

    The side-car's header is checked against the manifest's shapes before any mask is read.
    """
    d = Path(model_dir)
    man = load_manifest(d)
    shapes = _mask_shapes(man, d / man.get("manifest_file", MANIFEST))
    expected = {k: (((math.prod(s) + 7) // 8,), "U8") for k, s in shapes.items()}
    check_tensor_file(d / MASKS_FILE, expected, require_all=False, what="mask side-car")
    packed, meta = load_tensors(d / MASKS_FILE, "mask side-car")
    if meta.get("format") not in ("prunekit", LEGACY_FORMAT):
        raise ValueError(f"{d / MASKS_FILE} is not a prunekit mask side-car (format={meta.get('format')!r})")
    return {k: unpack_mask(v, shapes[k]) for k, v in packed.items()}, man


def load_masks(model_dir: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Deprecated alias of :func:`load_hf_masks`."""
    return load_hf_masks(model_dir)


def check_model_dir(model_dir: str | Path) -> Path:
    """Raise a clear error unless ``model_dir`` holds a transformers config and weights."""
    p = Path(model_dir)
    if not p.is_dir():
        raise FileNotFoundError(f"model directory {p} does not exist")
    if not (p / "config.json").is_file():
        raise ValueError(f"model directory {p} has no config.json (expected a save_pretrained folder)")
    from ..quant.format import is_quantized_dir
    from ..structured.slice import is_sliced_dir

    if is_quantized_dir(p) or is_sliced_dir(p):
        return p
    if not any((p / f).is_file() for f in WEIGHT_FILES) and not list(p.glob("model-*.safetensors")):
        raise ValueError(f"model directory {p} has no weights ({', '.join(WEIGHT_FILES)})")
    return p


def model_class(config: Any) -> type:
    """The transformers class named in ``config.architectures`` (the class the folder was saved from).

    Falls back to ``AutoModelForCausalLM`` (a causal LM) or ``AutoModel`` with a logged warning when the
    config names no class that this transformers version has.
    """
    import transformers

    archs = list(getattr(config, "architectures", None) or [])
    for name in archs:
        cls = getattr(transformers, name, None)
        if isinstance(cls, type) and hasattr(cls, "from_pretrained"):
            return cls
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    cls = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
    log.warning("config.architectures=%s names no class of transformers %s; loading with %s (task heads the "
                "folder holds may be dropped)", archs, transformers.__version__, cls.__name__)
    return cls


ATTN_IMPLEMENTATIONS = ("eager", "sdpa")


def check_attn_implementation(value: str | None) -> str | None:
    """``value`` if it is ``None`` or one of ``ATTN_IMPLEMENTATIONS``, else a ``ValueError`` naming the flag."""
    if value is not None and value not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"--attn-implementation must be one of {', '.join(ATTN_IMPLEMENTATIONS)}, got {value!r}")
    return value


def load_model(model_dir: str | Path, dtype: torch.dtype | None = None,
               attn_implementation: str | None = None) -> nn.Module:
    """The model of a ``save_pretrained`` folder as the class it was saved from (``config.architectures``), offline.

    ``attn_implementation`` (``eager`` | ``sdpa``; default: transformers' choice, SDPA where the class has it)
    selects the attention kernel: the two agree to rounding, not bit for bit, and a calibrated pruning
    propagates such differences from block to block (llm-compressor runs eager attention)."""
    from transformers import AutoConfig

    p = check_model_dir(model_dir)
    from ..quant.format import is_quantized_dir, load_quantized

    if is_quantized_dir(p):  # int8 / int4 weights of ``prunekit llm quantize``, dequantized
        model = load_quantized(p)
        return model if dtype is None else model.to(dtype)
    from ..structured.slice import is_sliced_dir, load_sliced

    if is_sliced_dir(p):  # ``prunekit llm slice``: shortcut blocks plain from_pretrained cannot build
        model = load_sliced(p)
        return model if dtype is None else model.to(dtype)
    cfg = AutoConfig.from_pretrained(p, local_files_only=True)
    kw: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
    if check_attn_implementation(attn_implementation) is not None:
        kw["attn_implementation"] = attn_implementation
    return model_class(cfg).from_pretrained(p, local_files_only=True, **kw).eval()


def load_pruned(model_dir: str | Path, attach_masks: bool = True) -> tuple[nn.Module, dict[str, Tensor], dict]:
    """Load a pruned model, its masks and manifest; with ``attach_masks`` the masks are attached for
    sparse fine-tuning (``prunekit.masks.attach``: pruned weights stay exactly zero)."""
    from ..masks import attach

    model = load_model(model_dir)
    masks, man = load_hf_masks(model_dir)
    params = dict(model.named_parameters())
    missing = [k for k in masks if k not in params]
    if missing:
        raise ValueError(f"{Path(model_dir) / MASKS_FILE}: masks name parameters the model lacks: {missing[:5]}")
    wrong = [k for k, m in masks.items() if m.shape != params[k].shape]
    if wrong:
        raise ValueError(f"{Path(model_dir) / MASKS_FILE}: mask {wrong[0]!r} has shape {list(masks[wrong[0]].shape)}"
                         f", the parameter's is {list(params[wrong[0]].shape)}")
    if attach_masks:
        attach(model, masks)
    return model, masks, man
