"""Group-wise weight-only integer quantization (round to nearest) that keeps a pruning mask.

Asymmetric min-max quantization per group of ``group`` consecutive inputs of each output row
(as in GPTQ's RTN baseline, Frantar et al. 2023, arXiv 2210.17323, Sec. 2 and its quantizer):
with the range [lo, hi] of the group's *kept* weights widened to include 0,
scale = (hi - lo) / (2^b - 1), z = round(-lo / scale), q = clamp(round(w / scale) + z, 0, 2^b - 1),
and w' = (q - z) * scale. Pruned weights (mask False) take no part in the range and stay exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

BITS = (4, 8)


@dataclass
class QuantizedWeight:
    """One ``(out, in)`` weight: codes ``q`` (uint8, one per weight), ``scale`` / ``zero`` per ``(out, groups)``."""

    q: Tensor  # (out, in) uint8 codes in [0, 2^bits)
    scale: Tensor  # (out, groups) float32
    zero: Tensor  # (out, groups) uint8
    mask: Tensor  # (out, in) bool, True = kept
    bits: int
    group: int

    def dequantize(self) -> Tensor:
        """``(q - z) * scale`` with the pruned weights exactly 0; ``(out, in)`` float32."""
        out, cols = self.q.shape
        g = self.q.reshape(out, cols // self.group, self.group).float()  # (out, G, group)
        w = (g - self.zero.float()[..., None]) * self.scale[..., None]
        return w.reshape(out, cols) * self.mask


def check_bits_group(bits: int, group: int) -> None:
    """Raise a clear error unless ``bits`` is 4 or 8 and ``group`` a positive integer."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
    if isinstance(group, bool) or not isinstance(group, int) or group < 1:
        raise ValueError(f"group must be a positive integer, got {group!r}")


def quantize(W: Tensor, bits: int, group: int, mask: Tensor | None = None) -> QuantizedWeight:
    """RTN quantization of ``W`` ``(out, in)`` in groups of ``group`` inputs; ``in`` must be a multiple of it."""
    check_bits_group(bits, group)
    out, cols = W.shape
    if cols % group:
        raise ValueError(f"group={group} must divide the input dimension {cols}")
    mask = torch.ones_like(W, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    qmax = 2**bits - 1
    Wg = W.float().reshape(out, cols // group, group)  # (out, G, group)
    Mg = mask.reshape(out, cols // group, group)
    lo = Wg.masked_fill(~Mg, torch.inf).amin(-1).clamp(max=0.0)  # (out, G), 0 when nothing is kept
    hi = Wg.masked_fill(~Mg, -torch.inf).amax(-1).clamp(min=0.0)
    scale = (hi - lo) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-lo / scale).clamp(0, qmax)  # (out, G)
    q = torch.round(Wg / scale[..., None] + zero[..., None]).clamp(0, qmax)
    q = torch.where(Mg, q, zero[..., None].expand_as(q))  # pruned weights take the code of 0
    return QuantizedWeight(q.reshape(out, cols).to(torch.uint8), scale, zero.to(torch.uint8), mask, bits, group)


def pack4(codes: Tensor) -> Tensor:
    """Two 4-bit codes per byte (even index in the low nibble); a 1-D uint8 of ``ceil(n / 2)`` bytes."""
    flat = codes.reshape(-1).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return flat[0::2] | (flat[1::2] << 4)


def unpack4(packed: Tensor, n: int) -> Tensor:
    """The ``n`` 4-bit codes of :func:`pack4`; 1-D uint8."""
    out = torch.stack([packed & 0xF, packed >> 4], dim=1).reshape(-1)
    return out[:n]
