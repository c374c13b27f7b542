"""Sparse-training methods by name: the callbacks that make ``fit`` train with each of them.

One factory shared by the CLI, the benchmarks and sweeps: ``training_callbacks("rigl", 0.9)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from ..errors import check_choice, check_sparsity
from ..masks import DEFAULT_EXCLUDE
from .distill import Distillation
from .dynamic import SET, GraNet, RigL
from .gradual import GradualMagnitude, GradualMovement
from .loop import Callback
from .nm import SRSTE
from .pai import PruneAtInit

TRAINING_METHODS = ("dense", "gradual", "movement", "rigl", "set", "granet", "srste", "static", "snip", "grasp",
                    "synflow", "magnitude_init")
_PAI = {"static": "random", "snip": "snip", "grasp": "grasp", "synflow": "synflow", "magnitude_init": "magnitude"}


def training_callbacks(method: str, sparsity: float | None = None, *, data: Any = None, n: int = 2, m: int = 4,
                       update_every: int = 100, update_fraction: float = 0.3, allocation: str | None = None,
                       scope: str = "global", exclude: Sequence[str] = DEFAULT_EXCLUDE, seed: int = 0,
                       teacher: nn.Module | None = None, alpha: float = 0.5, temperature: float = 4.0,
                       pai_options: dict[str, Any] | None = None) -> list[Callback]:
    """Callbacks for ``method`` (one of ``TRAINING_METHODS``) at ``sparsity``; a ``teacher`` adds distillation.

    ``data`` feeds SNIP / GraSP (and gives SynFlow its input shape); ``n:m`` is SR-STE's pattern.
    """
    check_choice(method, "method", TRAINING_METHODS)
    if method not in ("dense", "srste"):
        if sparsity is None:
            raise ValueError(f"method {method!r} needs a sparsity in [0, 1)")
        check_sparsity(sparsity)
    ex = list(exclude)
    cbs: list[Callback]
    if method == "dense":
        cbs = []
    elif method in ("gradual", "movement"):
        gradual = GradualMagnitude if method == "gradual" else GradualMovement
        cbs = [gradual(float(sparsity), scope=scope, allocation=allocation if scope == "layer" else None,
                       exclude=ex)]  # type: ignore[arg-type]
    elif method in ("rigl", "set"):
        cls = RigL if method == "rigl" else SET
        cbs = [cls(sparsity, update_fraction=update_fraction, update_every=update_every,
                   allocation=allocation or ("erk" if method == "rigl" else "er"), seed=seed, exclude=ex)]
    elif method == "granet":
        cbs = [GraNet(sparsity, update_fraction=update_fraction, update_every=update_every, scope=scope,
                      allocation=allocation or "erk", seed=seed, exclude=ex)]
    elif method == "srste":
        cbs = [SRSTE(n, m, exclude=ex)]
    else:
        options = {"exclude": ex, **(pai_options or {})}
        if method == "static":
            options = {"allocation": allocation or "erk", "seed": seed, **options}
        cbs = [PruneAtInit(_PAI[method], float(sparsity), data=data, options=options)]  # type: ignore[arg-type]
    if teacher is not None:
        cbs.append(Distillation(teacher, alpha=alpha, temperature=temperature))
    return cbs
