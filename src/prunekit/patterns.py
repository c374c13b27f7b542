"""Sparsity patterns and the exact top-k mask.

A pattern says which units are kept or pruned together:

- ``Unstructured()``: single weights.
- ``NM(n, m)``: keep exactly ``n`` of every ``m`` consecutive weights along the input dimension
  (Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks", the 2:4 format of Ampere GPUs).
- ``Block(h, w)``: ``h x w`` tiles of the 2-D weight view, kept or pruned whole.
- ``Channel()``: whole output units (rows of dim 0), kept or pruned whole (masks only; the
  ``structured`` package removes them for real).

Every weight is seen through a 2-D view ``(rows, cols)``: a Linear weight ``(out, in)`` as it is, a
convolution ``(out, in, *k)`` as ``(out, *k, in)`` flattened to ``(out * prod(k), in)`` for N:M, so
that N:M groups run along input channels, and as ``(out, in * prod(k))`` for the other patterns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import check_sparsity


@dataclass(frozen=True)
class Unstructured:
    """Single weights are the units."""

    def __str__(self) -> str:
        return "unstructured"


@dataclass(frozen=True)
class NM:
    """Keep ``n`` of every ``m`` consecutive weights along the input dimension."""

    n: int
    m: int

    def __post_init__(self) -> None:
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.n, self.m))
        if not ok or not 0 < self.n < self.m:
            raise ValueError(
                f"pattern NM(n, m) needs integers with 0 < n < m (e.g. NM(2, 4)), got NM({self.n!r}, {self.m!r})"
            )

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


@dataclass(frozen=True)
class Block:
    """``h x w`` tiles of the 2-D weight view are the units."""

    h: int
    w: int

    def __post_init__(self) -> None:
        ok = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (self.h, self.w))
        if not ok:
            raise ValueError(f"pattern Block(h, w) needs positive integers, got Block({self.h!r}, {self.w!r})")

    def __str__(self) -> str:
        return f"block:{self.h}x{self.w}"


@dataclass(frozen=True)
class Channel:
    """Whole output units (rows of dim 0) are the units."""

    def __str__(self) -> str:
        return "channel"


Pattern = Unstructured | NM | Block | Channel
PATTERN_HELP = "'unstructured', 'N:M' (e.g. '2:4'), 'block:HxW' (e.g. 'block:4x4') or 'channel'"


def parse_pattern(text: str | Pattern) -> Pattern:
    """Parse the CLI / JSON spelling of a pattern; a pattern object passes through."""
    if isinstance(text, (Unstructured, NM, Block, Channel)):
        return text
    if not isinstance(text, str):
        raise ValueError(f"pattern must be {PATTERN_HELP}, got {text!r}")
    t = text.strip().lower()
    try:
        if t == "unstructured":
            return Unstructured()
        if t == "channel":
            return Channel()
        if t.startswith("block:"):
            h, w = t[len("block:") :].split("x")
            return Block(int(h), int(w))
        if ":" in t:
            n, m = t.split(":")
            return NM(int(n), int(m))
    except ValueError as e:
        if "pattern" in str(e):
            raise
    raise ValueError(f"pattern must be {PATTERN_HELP}, got {text!r}")


def pattern_sparsity(pattern: Pattern, sparsity: float | None, name: str = "sparsity") -> float:
    """The sparsity a pattern reaches: ``1 - n/m`` for N:M (a conflicting value is an error)."""
    if isinstance(pattern, NM):
        if sparsity is not None and abs(float(sparsity) - pattern.sparsity) > 1e-9:
            raise ValueError(
                f"{name}={sparsity!r} conflicts with pattern {pattern} whose sparsity is "
                f"{pattern.sparsity:g}; pass {name}=None or {pattern.sparsity:g}"
            )
        return pattern.sparsity
    if sparsity is None:
        raise ValueError(f"{name} is required for pattern {pattern}: a number in [0, 1)")
    return float(check_sparsity(sparsity, name))


# ----------------------------------------------------------------------------------------------
# 2-D views of a weight


def _view2d(x: Tensor, nm: bool) -> Tensor:
    """``(rows, cols)`` view of a weight-shaped tensor (see module docstring)."""
    if x.dim() == 1:
        return x.reshape(1, -1)
    if x.dim() == 2:
        return x
    if nm:  # (out, in, *k) -> (out, *k, in) -> (out * prod(k), in)
        return x.movedim(1, -1).reshape(-1, x.shape[1])
    return x.reshape(x.shape[0], -1)


def _unview2d(x2: Tensor, shape: torch.Size, nm: bool) -> Tensor:
    if len(shape) <= 2:
        return x2.reshape(shape)
    if nm:
        perm_shape = (shape[0], *shape[2:], shape[1])
        return x2.reshape(perm_shape).movedim(-1, 1).contiguous()
    return x2.reshape(shape)


def check_pattern_fits(shape: tuple[int, ...] | torch.Size, pattern: Pattern, name: str = "weight") -> None:
    """Raise a clear error if ``pattern`` cannot tile a weight of ``shape``."""
    shape = tuple(shape)
    if isinstance(pattern, NM):
        cols = shape[1] if len(shape) >= 2 else shape[0]
        if cols % pattern.m:
            raise ValueError(
                f"pattern {pattern} needs the input dimension of {name} to be a multiple of m={pattern.m}, "
                f"but it is {cols} (shape {list(shape)}); leave it dense with exclude=[{_module(name)!r}] "
                f"(CLI: --exclude {_module(name)}) or give the layer before it a width divisible by {pattern.m}"
            )
    elif isinstance(pattern, Block):
        rows = shape[0] if len(shape) >= 2 else 1
        cols = math.prod(shape[1:]) if len(shape) >= 2 else shape[0]
        if rows % pattern.h or cols % pattern.w:
            raise ValueError(
                f"pattern {pattern} needs the 2-D view of {name} ({rows} x {cols}) to be divisible by "
                f"{pattern.h} x {pattern.w}; leave it dense with exclude=[{_module(name)!r}] "
                f"(CLI: --exclude {_module(name)})"
            )


def _module(name: str) -> str:
    """The module path of parameter ``name`` (``convs.1.weight`` -> ``convs.1``), as ``exclude`` matches it."""
    return name.rpartition(".")[0] or name


def unit_scores(scores: Tensor, pattern: Pattern) -> Tensor:
    """One score per unit of ``pattern`` (mean of its members), flattened.

    N:M has no free units: its selection happens inside each group; this returns per-weight scores.
    """
    nm = isinstance(pattern, NM)
    s2 = _view2d(scores, nm).float()
    if isinstance(pattern, Unstructured) or nm:
        return s2.reshape(-1)
    if isinstance(pattern, Channel):
        return s2.mean(dim=1)
    if isinstance(pattern, Block):
        r, c = s2.shape
        tiles = s2.reshape(r // pattern.h, pattern.h, c // pattern.w, pattern.w)
        return tiles.mean(dim=(1, 3)).reshape(-1)
    raise TypeError(f"unknown pattern {pattern!r}")


def expand_unit_mask(unit_mask: Tensor, shape: torch.Size, pattern: Pattern) -> Tensor:
    """Inverse of ``unit_scores``: a unit mask to a weight-shaped mask."""
    nm = isinstance(pattern, NM)
    if isinstance(pattern, Unstructured) or nm:
        return unit_mask.reshape(shape) if not nm else unit_mask
    rows = shape[0] if len(shape) >= 2 else 1
    cols = math.prod(shape[1:]) if len(shape) >= 2 else shape[0]
    if isinstance(pattern, Channel):
        m2 = unit_mask.reshape(rows, 1).expand(rows, cols)
    else:
        grid = unit_mask.reshape(rows // pattern.h, 1, cols // pattern.w, 1)
        m2 = grid.expand(rows // pattern.h, pattern.h, cols // pattern.w, pattern.w).reshape(rows, cols)
    return _unview2d(m2, shape, nm=False)


def keep_count(n_units: int, sparsity: float) -> int:
    """Number of units kept at ``sparsity``: ``round((1 - sparsity) * n_units)``."""
    return int(round((1.0 - sparsity) * n_units))


def topk_units(unit_score: Tensor, k: int) -> Tensor:
    """Boolean mask keeping the ``k`` highest scores; ties go to the lower index (deterministic)."""
    mask = torch.zeros(unit_score.numel(), dtype=torch.bool, device=unit_score.device)
    if k > 0:
        order = torch.argsort(unit_score.reshape(-1), descending=True, stable=True)
        mask[order[:k]] = True
    return mask


def nm_mask(scores: Tensor, n: int, m: int) -> Tensor:
    """Keep the ``n`` highest of every ``m`` consecutive scores along the input dimension."""
    shape = scores.shape
    s2 = _view2d(scores, nm=True).float()
    groups = s2.reshape(s2.shape[0], -1, m)  # (rows, cols/m, m)
    # stable descending order within each group; ties go to the lower index
    order = torch.argsort(groups, dim=-1, descending=True, stable=True)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n], True)
    return _unview2d(keep.reshape(s2.shape), shape, nm=True)


def _check_scores(scores: Tensor, name: str) -> None:
    if not torch.is_tensor(scores):
        raise TypeError(f"scores for {name} must be a tensor, got {type(scores).__name__}")
    if scores.is_floating_point() and torch.isnan(scores).any():
        raise ValueError(f"scores for {name} contain NaN (check the weights and statistics of {name})")


def topk_mask(
    scores: Tensor, sparsity: float | None, pattern: Pattern = Unstructured(), name: str = "weight"
) -> Tensor:
    """Exact keep-mask (``True`` = keep) with the highest ``scores`` under ``pattern``.

    Unstructured 0.9 on 1000 weights keeps exactly 100; ``NM(2, 4)`` keeps exactly 2 of every 4;
    ``Block`` and ``Channel`` keep ``round((1 - sparsity) * units)`` whole units.
    """
    _check_scores(scores, name)
    if isinstance(sparsity, float | int) and not isinstance(sparsity, bool) and sparsity >= 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r} for layer {name!r}: every weight would be "
                         "pruned (layer collapse); lower max_layer_sparsity below 1.0 (the default 0.99 keeps 1% "
                         f"of each layer) or exclude {name!r}")
    sparsity = pattern_sparsity(pattern, sparsity)
    check_pattern_fits(scores.shape, pattern, name)
    if isinstance(pattern, NM):
        return nm_mask(scores, pattern.n, pattern.m)
    u = unit_scores(scores, pattern)
    keep = topk_units(u, keep_count(u.numel(), sparsity))
    return expand_unit_mask(keep, scores.shape, pattern)


def mask_respects(mask: Tensor, pattern: Pattern) -> bool:
    """True if ``mask`` has the structure of ``pattern`` (N:M: at most n kept of every m)."""
    nm = isinstance(pattern, NM)
    m2 = _view2d(mask, nm)
    if isinstance(pattern, Unstructured):
        return True
    if nm:
        return bool((m2.reshape(m2.shape[0], -1, pattern.m).sum(-1) <= pattern.n).all())
    if isinstance(pattern, Channel):
        return bool((m2.all(1) | ~m2.any(1)).all())
    r, c = m2.shape
    tiles = m2.reshape(r // pattern.h, pattern.h, c // pattern.w, pattern.w)
    return bool((tiles.all(dim=(1, 3)) | ~tiles.any(dim=(1, 3))).all())
