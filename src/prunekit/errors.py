"""Input checks shared by every stage: each names the argument and the accepted values."""

from __future__ import annotations

import math
from typing import Any


def check_sparsity(value: Any, name: str = "sparsity", allow_none: bool = False) -> float | None:
    """Return ``value`` as a float in [0, 1), or raise naming ``name`` and the accepted range."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    v = float(value)
    if math.isnan(v) or not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return v


def check_fraction(value: Any, name: str, low_open: bool = True, high_closed: bool = True) -> float:
    """Return ``value`` as a float in (0, 1] (by default), or raise naming ``name``."""
    lo, hi = ("(" if low_open else "["), ("]" if high_closed else ")")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(float(value)):
        raise ValueError(f"{name} must be a number in {lo}0, 1{hi}, got {value!r}")
    v = float(value)
    ok_lo = v > 0 if low_open else v >= 0
    ok_hi = v <= 1 if high_closed else v < 1
    if not (ok_lo and ok_hi):
        raise ValueError(f"{name} must be in {lo}0, 1{hi}, got {value!r}")
    return v


def check_choice(value: Any, name: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value
