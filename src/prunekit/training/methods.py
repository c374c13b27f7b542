"""Sparse-training methods by name: the callbacks that make ``fit`` train with each of them.

Each method is one builder ``fn(sparsity, options) -> list[Callback]`` registered in ``METHODS``
(kind ``"training"``). One factory serves the CLI, the benchmarks and sweeps: ``training_callbacks("rigl", 0.9)``.
IMP / lottery tickets run ``fit`` once per level, so they are a driver (kind ``"training-driver"``):
``METHODS.get("imp").obj(model, IMP(0.8), data, epochs=10)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import check_sparsity
from ..masks import DEFAULT_EXCLUDE
from ..registry import METHODS
from .distill import Distillation
from .dynamic import SET, GraNet, RigL
from .gradual import GradualMagnitude, GradualMovement
from .loop import Callback
from .lottery import IMP, run_imp
from .nm import SRSTE
from .pai import PruneAtInit
from .supermask import Supermask


@dataclass
class TrainingOptions:
    """The options a training method may read; each builder takes the ones it needs."""

    data: Any = None  # feeds SNIP / GraSP (and gives SynFlow its input shape)
    n: int = 2  # SR-STE's N:M pattern
    m: int = 4
    update_every: int = 100
    update_fraction: float = 0.3
    allocation: str | None = None
    scope: str = "global"
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    seed: int = 0
    pai_options: dict[str, Any] = field(default_factory=dict)


def training_callbacks(method: str, sparsity: float | None = None, *, data: Any = None, n: int = 2, m: int = 4,
                       update_every: int = 100, update_fraction: float = 0.3, allocation: str | None = None,
                       scope: str = "global", exclude: Sequence[str] = DEFAULT_EXCLUDE, seed: int = 0,
                       teacher: nn.Module | None = None, alpha: float = 0.5, temperature: float = 4.0,
                       pai_options: dict[str, Any] | None = None) -> list[Callback]:
    """Callbacks for training ``method`` (a name in ``METHODS.names("training")`` or an alias) at ``sparsity``.

    ``data`` feeds SNIP / GraSP (and gives SynFlow its input shape); ``n:m`` is SR-STE's pattern; a
    ``teacher`` adds distillation (Hinton et al. 2015) with ``alpha`` and ``temperature``.
    """
    entry = METHODS.get(method, kind="training")
    options = TrainingOptions(data, n, m, update_every, update_fraction, allocation, scope, list(exclude), seed,
                              dict(pai_options or {}))
    cbs = list(entry.obj(sparsity, options))
    if teacher is not None:
        cbs.append(Distillation(teacher, alpha=alpha, temperature=temperature))
    return cbs


def _target(sparsity: float | None, method: str) -> float:
    if sparsity is None:
        raise ValueError(f"method {method!r} needs a sparsity in [0, 1)")
    return float(check_sparsity(sparsity))


@METHODS.register("dense", kind="training", summary="Dense training, no pruning (the baseline).")
def _dense(sparsity: float | None, o: TrainingOptions) -> list[Callback]:
    return []


@METHODS.register("gradual", kind="training", config=GradualMagnitude, aliases=("gradual_magnitude",))
def _gradual(sparsity: float | None, o: TrainingOptions) -> list[Callback]:
    return [GradualMagnitude(_target(sparsity, "gradual"), scope=o.scope,  # type: ignore[arg-type]
                             allocation=o.allocation if o.scope == "layer" else None, exclude=o.exclude)]


@METHODS.register("movement", kind="training", config=GradualMovement, aliases=("gradual_movement",))
def _movement(sparsity: float | None, o: TrainingOptions) -> list[Callback]:
    return [GradualMovement(_target(sparsity, "movement"), scope=o.scope,  # type: ignore[arg-type]
                            allocation=o.allocation if o.scope == "layer" else None, exclude=o.exclude)]


@METHODS.register("rigl", kind="training", config=RigL)
def _rigl(sparsity: float | None, o: TrainingOptions) -> list[Callback]:
    return [RigL(_target(sparsity, "rigl"), update_fraction=o.update_fraction, update_every=o.update_every,
                 allocation=o.allocation or "erk", seed=o.seed, exclude=o.exclude)]


@METHODS.register("set", kind="training", config=SET)
def _set(sparsity: float | None, o: TrainingOptions) -> list[Callback]:
    return [SET(_target(sparsity, "set"), update_fraction=o.update_fraction, update_every=o.update_every,
                allocation=o.allocation or "er", seed=o.seed, exclude=o.exclude)]


@METHODS.register("granet", kind="training", config=GraNet)
def _granet(sparsity: float | None, o: TrainingOptions) -> list[Callback]:
    return [GraNet(_target(sparsity, "granet"), update_fraction=o.update_fraction, update_every=o.update_every,
                   scope=o.scope, allocation=o.allocation or "erk", seed=o.seed, exclude=o.exclude)]


@METHODS.register("srste", kind="training", config=SRSTE)
def _srste(sparsity: float | None, o: TrainingOptions) -> list[Callback]:
    return [SRSTE(o.n, o.m, exclude=o.exclude)]


@METHODS.register("static", kind="training", config=PruneAtInit,
                  summary="Random masks at initialization, fixed for training (Liu et al. 2022), ERK by default.")
def _static(sparsity: float | None, o: TrainingOptions) -> list[Callback]:
    options = {"allocation": o.allocation or "erk", "seed": o.seed, "exclude": o.exclude, **o.pai_options}
    return [PruneAtInit("random", _target(sparsity, "static"), data=o.data, options=options)]


def _at_init(name: str, score: str) -> Any:
    def build(sparsity: float | None, o: TrainingOptions) -> list[Callback]:
        options = {"exclude": o.exclude, **o.pai_options}
        return [PruneAtInit(score, _target(sparsity, name), data=o.data, options=options)]

    return build


for _name, _score, _old, _summary in (
        ("snip-init", "snip", "snip", "SNIP masks at initialization (Lee et al. 2019), fixed for training."),
        ("grasp-init", "grasp", "grasp", "GraSP masks at initialization (Wang et al. 2020), fixed for training."),
        ("synflow-init", "synflow", "synflow", "SynFlow masks at initialization (Tanaka et al. 2020), fixed."),
        ("magnitude-init", "magnitude", "magnitude_init", "Magnitude masks of the initial weights, fixed.")):
    METHODS.register(_name, kind="training", config=PruneAtInit, summary=_summary, aliases=(_old,))(
        _at_init(_name, _score))

def _supermask(name: str, mode: str) -> Any:
    def build(sparsity: float | None, o: TrainingOptions) -> list[Callback]:
        keys = ("pai", "input_shape", "synflow_iterations", "weight_init", "restriction", "init_scores")
        opts = {k: v for k, v in o.pai_options.items() if k in keys}
        if "iterations" in o.pai_options:
            opts.setdefault("synflow_iterations", o.pai_options["iterations"])
        return [Supermask(mode, _target(sparsity, name), data=o.data, seed=o.seed, exclude=o.exclude, **opts)]

    return build


for _name, _mode, _summary in (
        ("edge-popup", "edge-popup", "Edge-popup supermask over frozen random weights (Ramanujan et al. 2020)."),
        ("sign-supermask", "sign", "HideNseek sign supermask over SynFlow-kept frozen weights (Vallapuram et al. "
                                   "2022)."),
        ("jackpot", "jackpot", "Lottery Jackpots: mask search over trained frozen weights, magnitude init, short "
                               "restriction (Zhang et al. 2022).")):
    METHODS.register(_name, kind="training", config=Supermask, summary=_summary)(_supermask(_name, _mode))

METHODS.register("imp", kind="training-driver", config=IMP, aliases=("lottery", "lottery-ticket"))(run_imp)

TRAINING_METHODS = tuple(e.name for e in METHODS.entries("training", load=False))
