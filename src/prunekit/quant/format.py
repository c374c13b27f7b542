"""Save and load quantized (and pruned) transformers: one safetensors file of packed codes, bitmasks and scales.

Per quantized weight ``p`` (a Linear's ``(out, in)``): ``p.scale`` float32 and ``p.zero`` uint8 ``(out,
groups)``; with the weight's sparsity high enough that it pays (kept * bits + 1 < bits per weight),
``p.mask`` (the bit-packed keep mask, 1 bit per weight) and ``p.q`` the codes of the kept weights
only, in row-major order; otherwise ``p.q`` holds every code. 4-bit codes are packed two per byte.
Fused 3-D MoE expert tensors are quantized the same way as their 2-D view. Every other tensor
(embeddings, norms, routers, the LM head) is stored as is. ``prunekit_quant.json`` records the
scheme and each tensor; ``config.json`` and the tokenizer are saved beside. :func:`load_quantized`
rebuilds the model class of ``config.json`` with dequantized float32 weights.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..io import atomic_dir, load_tensors, read_json, save_tensors, write_json
from .rtn import QuantizedWeight, check_bits_group, pack4, quantize, unpack4

log = logging.getLogger(__name__)
WEIGHTS = "quantized.safetensors"
MANIFEST = "prunekit_quant.json"
SCHEME = "rtn-asymmetric-minmax-groupwise"


def is_quantized_dir(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :func:`save_quantized`."""
    return (Path(path) / MANIFEST).is_file() and (Path(path) / WEIGHTS).is_file()


FUSED_EXPERTS = ("gate_up_proj", "up_proj", "down_proj")  # 3-D (E, out, in) expert tensors of transformers 5
ROUTERS = ("gate", "router", "shared_expert_gate")  # MoE routers and gates stay as they are


def linear_weights(model: nn.Module, exclude: list[str] | tuple[str, ...] = ("lm_head",)) -> dict[str, Tensor]:
    """``{parameter name: weight}`` of every ``nn.Linear`` (not routers) and fused expert tensor outside ``exclude``.

    A fused expert tensor is quantized as its 2-D view ``(E * rows, last dim)``: groups run along its
    last dimension (the input dimension, or the output one where the module says ``is_transposed``).
    """
    out = {}
    for name, mod in model.named_modules():
        if any(x in name.split(".") for x in exclude):
            continue
        if isinstance(mod, nn.Linear):
            if name.rsplit(".", 1)[-1] not in ROUTERS:
                out[f"{name}.weight"] = mod.weight
        elif isinstance(getattr(mod, "num_experts", None), int):
            for attr in FUSED_EXPERTS:
                p = getattr(mod, attr, None)
                if isinstance(p, nn.Parameter) and p.dim() == 3:
                    out[f"{name}.{attr}"] = p
    return out


def _group_for(cols: int, group: int) -> int:
    """``group``, or where it does not divide ``cols`` the largest divisor of ``cols`` below it."""
    return next(g for g in range(min(group, cols), 0, -1) if cols % g == 0)


def _encode(name: str, qw: QuantizedWeight) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The stored tensors of one quantized weight and its manifest entry."""
    from ..calibrate.io import pack_mask

    kept = int(qw.mask.sum())
    numel = qw.mask.numel()
    sparse = kept / numel * qw.bits + 1 < qw.bits
    codes = qw.q[qw.mask] if sparse else qw.q.reshape(-1)  # (kept,) or (numel,)
    stored = {f"{name}.q": pack4(codes) if qw.bits == 4 else codes.contiguous(),
              f"{name}.scale": qw.scale, f"{name}.zero": qw.zero}
    if sparse:
        stored[f"{name}.mask"] = pack_mask(qw.mask.contiguous())
    entry = {"shape": list(qw.q.shape), "group": qw.group, "sparse": sparse, "kept": kept, "numel": numel}
    return stored, entry


def _decode(name: str, t: dict[str, Tensor], entry: dict[str, Any], bits: int) -> Tensor:
    """The dequantized ``(out, in)`` float32 weight ``name`` from the stored tensors."""
    from ..calibrate.io import unpack_mask

    full, n = entry["shape"], entry["kept"] if entry["sparse"] else entry["numel"]
    shape = [math.prod(full[:-1]), full[-1]]  # the 2-D view it was quantized as
    codes = unpack4(t[f"{name}.q"], n) if bits == 4 else t[f"{name}.q"]
    if codes.numel() != n:
        raise ValueError(f"{WEIGHTS}: {name}.q holds {codes.numel()} codes, the manifest says {n}")
    mask = unpack_mask(t[f"{name}.mask"], shape) if entry["sparse"] else torch.ones(shape, dtype=torch.bool)
    q = torch.zeros(shape, dtype=torch.uint8)
    if entry["sparse"]:
        q[mask] = codes
    else:
        q = codes.reshape(shape)
    w = QuantizedWeight(q, t[f"{name}.scale"], t[f"{name}.zero"], mask, bits, entry["group"]).dequantize()
    return w.reshape(full)


def quantize_model(model: nn.Module, bits: int, group: int = 128, exclude: list[str] | tuple[str, ...] = ("lm_head",)
                   ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Quantize every Linear / fused expert weight of ``model`` (zeros kept as the mask); stored tensors, manifest."""
    check_bits_group(bits, group)
    weights = linear_weights(model, exclude)
    if not weights:
        raise ValueError(f"{type(model).__name__} has no Linear weight to quantize outside exclude={list(exclude)}")
    stored: dict[str, Tensor] = {}
    entries: dict[str, Any] = {}
    fallback = []
    for name, w in weights.items():
        W = w.detach().float().reshape(-1, w.shape[-1])  # (out, in); fused experts (E * out, in)
        g = _group_for(W.shape[1], group)
        if g != group:
            fallback.append(name)
        tensors, entries[name] = _encode(name, quantize(W, bits, g, W != 0))  # pruned weights are exact zeros
        entries[name]["shape"] = list(w.shape)
        stored.update(tensors)
    if fallback:
        log.warning("group=%d does not divide the input dimension of %s: the largest divisor below it instead "
                    "(per tensor in the manifest)", group, fallback)
    seen: dict[int, str] = {}
    plain, tied = [], {}
    for name, t in model.state_dict().items():
        if name in weights:
            continue
        key = t.data_ptr() if t.numel() else id(t)
        if key in seen:  # tied to a tensor already stored
            tied[name] = seen[key]
            continue
        seen[key] = name
        stored[name] = t.detach().clone()
        plain.append(name)
    man = {"format": "prunekit", "kind": "quantized", "version": 1, "scheme": SCHEME, "bits": bits, "group": group,
           "quantized": entries, "plain": plain, "tied": tied, "group_fallback": fallback}
    return stored, man


def save_quantized(model: nn.Module, out: str | Path, bits: int, group: int = 128, *, tokenizer: Any = None,
                   exclude: list[str] | tuple[str, ...] = ("lm_head",), overwrite: bool = False,
                   extra: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """Quantize ``model`` and write the folder atomically (``config.json``, weights, manifest, tokenizer)."""
    stored, man = quantize_model(model, bits, group, exclude)
    man = {**man, "model_class": type(model).__name__, **(extra or {})}
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        cfg = copy.deepcopy(model.config)
        cfg.architectures = [type(model).__name__]  # the class load_quantized rebuilds
        cfg.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_tensors(tmp / WEIGHTS, stored, {"format": "prunekit", "kind": "quantized", "version": "1"})
        man["bytes"] = {"weights_file": (tmp / WEIGHTS).stat().st_size}
        write_json(tmp / MANIFEST, man)
    return out, man


def load_quantized(path: str | Path) -> nn.Module:
    """The model of a :func:`save_quantized` folder, as its ``config.json`` class, with dequantized weights."""
    from transformers import AutoConfig

    from ..calibrate.io import model_class

    d = Path(path)
    if not is_quantized_dir(d):
        raise FileNotFoundError(f"{d} is not a quantized prunekit folder (no {MANIFEST} / {WEIGHTS})")
    man = read_json(d / MANIFEST, "quantization manifest")
    if man.get("kind") != "quantized" or man.get("bits") not in (4, 8):
        raise ValueError(f"{d / MANIFEST}: kind {man.get('kind')!r}, bits {man.get('bits')!r}; expected a "
                         "quantized manifest with bits 4 or 8")
    t, _ = load_tensors(d / WEIGHTS, "quantized weights")
    state = {name: _decode(name, t, e, man["bits"]) for name, e in man["quantized"].items()}
    state.update({name: t[name] for name in man["plain"]})
    state.update({name: state[src] for name, src in man.get("tied", {}).items()})
    cfg = AutoConfig.from_pretrained(d, local_files_only=True)
    cls = model_class(cfg)
    model = cls._from_config(cfg) if hasattr(cls, "_from_config") else cls.from_config(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{d}: the stored tensors do not match {type(model).__name__}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model.eval()
