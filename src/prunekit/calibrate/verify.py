"""Check a saved pruned model against its source, tensor by tensor: every tensor pruned or bit-identical.

Both folders are read one tensor at a time (safetensors, sharded safetensors or a ``pytorch_model.bin``
loaded with ``weights_only=True``), so the check needs memory for two tensors, not two models.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)
BIN_FILES = ("pytorch_model.bin",)


class SavedModelMismatch(RuntimeError):
    """A saved tensor is missing, or changed although it was not pruned."""


def weight_files(model_dir: str | Path) -> list[Path]:
    """The weight files of a ``save_pretrained`` folder (safetensors shards first, else ``pytorch_model*.bin``)."""
    d = Path(model_dir)
    files = sorted(d.glob("model*.safetensors"))
    return files or sorted(d.glob("pytorch_model*.bin"))


class TensorReader:
    """Read the tensors of a model folder by name, lazily, without loading the whole model."""

    def __init__(self, model_dir: str | Path) -> None:
        from safetensors import safe_open

        self._stack = ExitStack()
        self.where: dict[str, Any] = {}
        files = weight_files(model_dir)
        if not files:
            raise FileNotFoundError(f"{model_dir} holds no model*.safetensors or pytorch_model*.bin weights")
        for f in files:
            if f.suffix == ".safetensors":
                h = self._stack.enter_context(safe_open(str(f), framework="pt"))
                self.where.update({k: h for k in h.keys()})
            else:
                sd = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
                self.where.update({k: sd for k in sd})

    def get(self, name: str) -> Tensor:
        src = self.where[name]
        return src[name] if isinstance(src, dict) else src.get_tensor(name)

    def names(self) -> list[str]:
        return list(self.where)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bit_identical(a: Tensor, b: Tensor) -> bool:
    """Same dtype, shape and bytes (NaN and -0.0 compared by their bits)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def compare_saved(source_dir: str | Path, out_dir: str | Path, pruned: dict[str, Any],
                  not_saved: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """Compare every tensor of ``source_dir`` with ``out_dir``; ``pruned`` maps tensor names to bool masks
    (or bit-packed ``(uint8 bits, shape)`` pairs).

    ``not_saved`` names buffers the loaded model holds but does not save (non-persistent, e.g. BERT's
    ``embeddings.position_ids`` that checkpoints of transformers 4.x still carry): absent from the output,
    they are listed under ``"dropped"`` with a logged warning instead of failing the check.

    Returns ``{"kept_identical": [...], "pruned": [...], "counts": {...}, "counted_sparsity": zeros / numel
    over the pruned tensors as saved}``. Raises ``SavedModelMismatch`` when a source tensor is missing from
    the output, an unpruned tensor changed, a pruned weight is non-zero where its mask is False, or a
    pruned name is not in the output.
    """
    kept, done, missing, changed, leaks, dropped = [], [], [], [], [], []
    zeros = numel = 0
    with TensorReader(source_dir) as src, TensorReader(out_dir) as out:
        out_names = set(out.names())
        for name in src.names():
            if name not in out_names:
                (dropped if name in not_saved else missing).append(name)
                continue
            new = out.get(name)
            if name in pruned:
                done.append(name)
                m = _mask(pruned[name]).reshape(new.shape)
                leaks += [name] if bool((new[~m] != 0).any()) else []
                zeros += int((new == 0).sum())
                numel += new.numel()
            elif bit_identical(src.get(name), new):
                kept.append(name)
            else:
                changed.append(name)
        absent = sorted(set(pruned) - set(done))
        added = sorted(out_names - set(src.names()))
    problems = {"missing from the output": missing, "changed but not pruned": changed,
                "non-zero where the mask prunes": leaks, "pruned but not in the source files": absent}
    bad = {k: v for k, v in problems.items() if v}
    if bad:
        raise SavedModelMismatch("the saved model does not match its source: " +
                                 "; ".join(f"{k}: {v[:5]}{' ...' if len(v) > 5 else ''}" for k, v in bad.items()))
    if dropped:
        log.warning("%d tensors of the source are non-persistent buffers of the model, rebuilt on load and not "
                    "saved: %s", len(dropped), dropped[:5])
    if added:
        log.warning("the saved model has %d tensors the source files lack: %s", len(added), added[:5])
    log.info("saved model checked: %d tensors pruned, %d bit-identical to the source", len(done), len(kept))
    return {"kept_identical": kept, "pruned": done, "added": added, "dropped": dropped,
            "counts": {"pruned": len(done), "kept_identical": len(kept), "added": len(added),
                       "dropped": len(dropped)},
            "counted_zeros": zeros, "counted_numel": numel, "counted_sparsity": zeros / numel if numel else 0.0}


def file_masks(model: Any, packed: dict[str, tuple[Tensor, list[int]]]) -> tuple[dict[str, Any], dict[str, list]]:
    """The masks renamed and reshaped as ``save_pretrained`` writes their weights, and the renaming.

    transformers 5.x reverts its load-time weight conversions on save (e.g. Mixtral's fused
    ``mlp.experts.gate_up_proj`` is written as per-expert ``block_sparse_moe.experts.<e>.w1/w3.weight``);
    each mask goes through the same conversion (:func:`transformers.core_model_loading.revert_weight_conversion`),
    one tensor at a time, and is packed again. Returns ``({file name: (bits, shape)}, {param: [file names]})``.
    """
    from .io import pack_mask, unpack_mask

    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # an older transformers without load-time conversions
        return packed, {}
    out: dict[str, Any] = {}
    renamed: dict[str, list] = {}
    try:
        for name, (bits, shape) in packed.items():
            converted = revert_weight_conversion(model, {name: unpack_mask(bits, shape)})
            if list(converted) == [name] and list(converted[name].shape) == list(shape):
                out[name] = (bits, shape)
                continue
            renamed[name] = sorted(converted)
            out.update({k: (pack_mask(m.contiguous()), list(m.shape)) for k, m in converted.items()})
    except Exception as e:  # a conversion that needs several tensors at once (many-to-one on save)
        log.info("mask layout conversion one tensor at a time failed (%s); converting all masks together", e)
        every = revert_weight_conversion(model, {k: unpack_mask(b, s) for k, (b, s) in packed.items()})
        out = {k: (pack_mask(m.contiguous()), list(m.shape)) for k, m in every.items()}
        new = sorted(set(every) - set(packed))  # which file tensor came from which mask is not tracked here
        renamed = {k: new for k in packed if k not in every}
    return out, renamed


def _mask(m: Any) -> Tensor:
    from .io import unpack_mask

    return unpack_mask(*m) if isinstance(m, tuple) else m
