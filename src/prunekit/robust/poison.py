"""Backdoor poisoning: BadNets triggers (Gu et al. 2017) and blended triggers (Chen et al. 2017).

One rule serves both attacks: a triggered input is ``x' = (1 - a*m) * x + a*m * p`` with the trigger's
pattern ``p``, its footprint ``m`` (1 where it applies) and its opacity ``a``. BadNets stamps a fixed
pattern (``a = 1``) on a window of a 1-D signal (MNIST-1D) or on a corner patch of an image (digits);
the blended attack mixes a fixed random pattern into the whole input (``m = 1``, ``a = alpha``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor

log = logging.getLogger(__name__)

ATTACKS = ("badnets", "blended")


@dataclass(frozen=True)
class Trigger:
    """A backdoor trigger for inputs of one example shape: ``x' = (1 - alpha*mask) * x + alpha*mask * pattern``."""

    attack: str
    pattern: Tensor  # example shape, e.g. (40,) or (1, 8, 8)
    mask: Tensor  # example shape, 1.0 where the trigger applies, 0.0 elsewhere
    alpha: float

    def apply(self, x: Tensor) -> Tensor:
        """Triggered copies of the batch ``x`` ``(B, *example_shape)``; ``x`` is not changed."""
        if tuple(x.shape[1:]) != tuple(self.pattern.shape):
            raise ValueError(f"inputs of shape {tuple(x.shape[1:])} do not fit a trigger built for "
                             f"{tuple(self.pattern.shape)}")
        am = self.alpha * self.mask.to(x)  # (*example_shape)
        return (1 - am) * x + am * self.pattern.to(x)

    def carried_by(self, x: Tensor, atol: float = 1e-6) -> Tensor:
        """``(B,)`` True where an input already equals its own triggered version (it carries the trigger)."""
        return (self.apply(x) - x).abs().flatten(1).amax(1) <= atol

    def describe(self) -> dict[str, object]:
        """JSON-ready summary: attack, opacity, footprint size."""
        return {"attack": self.attack, "alpha": self.alpha, "footprint": int(self.mask.sum()),
                "shape": list(self.pattern.shape)}


def _check_int(value: object, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def make_trigger(attack: str, example_shape: tuple[int, ...], *, size: int | None = None,
                 amplitude: float | None = None, alpha: float = 0.2, low: float = 0.0, high: float = 1.0,
                 seed: int = 0) -> Trigger:
    """The trigger of ``attack`` for inputs shaped ``example_shape`` (no batch dimension).

    BadNets: a 1-D input gets a window of ``size`` (default 5) values at its end, alternating
    ``+amplitude`` / ``-amplitude`` (default 3: beyond the range of most MNIST-1D values); an image (last
    two dimensions H, W) gets a ``size`` x ``size`` (default 3) checkerboard of ``high`` / ``low`` in its
    bottom-right corner. Blended: a fixed uniform random pattern in [``low``, ``high``] (drawn from ``seed``)
    mixed into the whole input with opacity ``alpha`` (Chen et al. 2017 use 0.2).
    """
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {', '.join(ATTACKS)}, got {attack!r}")
    shape = tuple(int(s) for s in example_shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"example_shape must be a non-empty shape of positive sizes, got {example_shape!r}")
    if attack == "blended":
        if not 0.0 < float(alpha) <= 1.0:
            raise ValueError(f"alpha (blend opacity) must be in (0, 1], got {alpha!r}")
        gen = torch.Generator().manual_seed(seed)
        pattern = low + (high - low) * torch.rand(shape, generator=gen)
        return Trigger("blended", pattern, torch.ones(shape), float(alpha))
    if len(shape) >= 2 and shape[-2] > 1 and shape[-1] > 1:
        return _corner_patch(shape, 3 if size is None else size, low, high)
    return _window(shape, 5 if size is None else size, 3.0 if amplitude is None else amplitude)


def _window(shape: tuple[int, ...], size: int, amplitude: float) -> Trigger:
    """BadNets on a signal: the last ``size`` values along the last axis replaced by +a, -a, +a, ..."""
    length = shape[-1]
    _check_int(size, "trigger size", 1)
    if size > length:
        raise ValueError(f"trigger size {size} is longer than the signal ({length} values)")
    if not math.isfinite(amplitude) or amplitude == 0:
        raise ValueError(f"trigger amplitude must be a non-zero number, got {amplitude!r}")
    sign = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(size)])
    pattern, mask = torch.zeros(shape), torch.zeros(shape)
    pattern[..., length - size:] = amplitude * sign
    mask[..., length - size:] = 1.0
    return Trigger("badnets", pattern, mask, 1.0)


def _corner_patch(shape: tuple[int, ...], size: int, low: float, high: float) -> Trigger:
    """BadNets on an image: a ``size`` x ``size`` checkerboard of ``high``/``low`` in the bottom-right corner."""
    h, w = shape[-2], shape[-1]
    _check_int(size, "trigger size", 1)
    if size > min(h, w):
        raise ValueError(f"trigger size {size} does not fit a {h}x{w} image")
    ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    board = torch.where((ii + jj) % 2 == 0, torch.tensor(high), torch.tensor(low))  # (size, size)
    pattern, mask = torch.zeros(shape), torch.zeros(shape)
    pattern[..., h - size:, w - size:] = board
    mask[..., h - size:, w - size:] = 1.0
    return Trigger("badnets", pattern, mask, 1.0)


@dataclass
class Poisoned:
    """A poisoned training set: inputs, labels (poisoned ones relabelled) and which rows were poisoned."""

    x: Tensor
    y: Tensor
    poisoned: Tensor  # (n_poisoned,) sorted row indices
    target: int
    rate: float


def check_poison_args(rate: object, target: object, num_classes: int) -> tuple[float, int]:
    """``rate`` in (0, 1) and ``target`` a class in [0, num_classes), else ``ValueError`` naming them."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < float(rate) < 1.0:
        raise ValueError(f"--poison (the poison rate) must be a fraction in (0, 1), got {rate!r}")
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < num_classes:
        raise ValueError(f"--target must be a class label in 0..{num_classes - 1}, got {target!r}")
    return float(rate), int(target)


def poison(x: Tensor, y: Tensor, trigger: Trigger, rate: float, target: int, num_classes: int,
           seed: int = 0) -> Poisoned:
    """Stamp ``trigger`` on ``round(rate * N)`` training inputs of classes other than ``target`` and
    relabel them ``target`` (BadNets' dirty-label poisoning); ``x`` and ``y`` are not changed."""
    rate, target = check_poison_args(rate, target, num_classes)
    others = torch.nonzero(y != target).flatten()
    n = round(rate * len(y))
    if n < 1 or n > len(others):
        raise ValueError(f"--poison {rate} asks for {n} poisoned examples; between 1 and {len(others)} "
                         f"(the examples outside the target class) are possible")
    gen = torch.Generator().manual_seed(seed)
    rows = torch.sort(others[torch.randperm(len(others), generator=gen)[:n]]).values
    xp, yp = x.clone(), y.clone()
    xp[rows] = trigger.apply(x[rows])
    yp[rows] = target
    log.info("poisoned %d of %d training examples (%s, target %d)", n, len(y), trigger.attack, target)
    return Poisoned(xp, yp, rows, target, rate)
