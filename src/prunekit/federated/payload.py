"""What goes over the wire: tensors as raw little-endian float32 bytes, masks and signs as packed bits.

A payload is a list of ``bytes``; its size is ``payload_bytes`` (the sum of their lengths), exactly what
Flower's ``Parameters.tensors`` carries, so byte counts are those of the serialised messages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ..training.supermask import pack_bits, unpack_bits


def payload_bytes(payload: Sequence[bytes]) -> int:
    """Bytes of a payload as serialised (the sum of its buffers' lengths)."""
    return sum(len(b) for b in payload)


def floats(tensors: Mapping[str, Tensor], names: Sequence[str]) -> list[bytes]:
    """Each named tensor as raw float32 bytes, in ``names`` order."""
    return [tensors[n].detach().cpu().to(torch.float32).contiguous().numpy().astype("<f4").tobytes() for n in names]


def unfloats(payload: Sequence[bytes], shapes: Mapping[str, Sequence[int]]) -> dict[str, Tensor]:
    """Inverse of ``floats``; a buffer of the wrong size is an error naming the tensor."""
    if len(payload) != len(shapes):
        raise ValueError(f"payload holds {len(payload)} tensors, expected {len(shapes)}")
    out = {}
    for b, (name, shape) in zip(payload, shapes.items()):
        arr = np.frombuffer(b, dtype="<f4")
        if arr.size != int(np.prod(shape)):
            raise ValueError(f"payload tensor {name!r} has {arr.size} values, its shape {list(shape)} needs "
                             f"{int(np.prod(shape))}")
        out[name] = torch.from_numpy(arr.copy()).view(*shape)
    return out


def bits(masks: Sequence[Tensor]) -> list[bytes]:
    """Each bool tensor packed to one bit per element."""
    return [pack_bits(m).tobytes() for m in masks]


def unbits(payload: Sequence[bytes], shapes: Sequence[Sequence[int]]) -> list[Tensor]:
    """Inverse of ``bits`` for the given shapes."""
    if len(payload) != len(shapes):
        raise ValueError(f"payload holds {len(payload)} bit tensors, expected {len(shapes)}")
    return [unpack_bits(b, s) for b, s in zip(payload, shapes)]


def quantized(values: Sequence[Tensor]) -> list[bytes]:
    """Probabilities in [0, 1] as one byte each: round(255 p)."""
    return [torch.round(v.detach().cpu().clamp(0, 1) * 255).to(torch.uint8).numpy().tobytes() for v in values]


def unquantized(payload: Sequence[bytes], sizes: Sequence[int]) -> list[Tensor]:
    """Inverse of ``quantized`` (p = q / 255); a buffer of the wrong size is an error."""
    if len(payload) != len(sizes):
        raise ValueError(f"payload holds {len(payload)} byte tensors, expected {len(sizes)}")
    out = []
    for b, n in zip(payload, sizes):
        if len(b) != n:
            raise ValueError(f"quantized payload holds {len(b)} bytes, expected {n}")
        out.append(torch.from_numpy(np.frombuffer(b, dtype=np.uint8).astype(np.float32)) / 255.0)
    return out
