"""Iterative magnitude pruning (IMP) and lottery tickets with rewinding, as rounds of ``fit``.

Level 0 trains the dense model. Each following level prunes ``fraction`` of the remaining weights by
magnitude (Han et al. 2015), then either rewinds the surviving weights to their values after
``rewind_step`` optimizer steps (Frankle & Carbin 2019 for step 0; Frankle et al. 2020, "Linear Mode
Connectivity and the Lottery Ticket Hypothesis", for step k > 0) and trains again from step k, or keeps
the trained weights and fine-tunes them (``rewind_step=None``). Sparsity after level r is exactly
1 - (1 - fraction)^r (``schedules.Iterative``).

The optimizer state at each level is an explicit policy, ``optimizer_state``:
- ``"reset"``: a new optimizer (no momentum), as OpenLTH does;
- ``"rewind"``: the optimizer state saved at ``rewind_step``, rewound with the weights;
- ``"keep"``: the optimizer of the previous level, its state of pruned weights zeroed.

``random_reinit_control`` trains the same masks from freshly drawn initial weights: the control that
tells a winning ticket from a good mask.

``soup=k`` (Sparse Model Soups, Zimmer et al. 2024, "Sparse Model Soups: A Recipe for Improved Pruning via
Model Averaging", Alg. 1): each level retrains ``k`` copies of the pruned model from the same start with
different batch orders (seeds), all under the level's one mask, and averages them; the average keeps the
mask exactly and is what the next level prunes.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..config import Config
from ..errors import check_choice, check_fraction, check_sparsity
from ..masks import DEFAULT_EXCLUDE, attach, attached
from ..oneshot import Magnitude, prune_scored_
from ..schedules import Iterative
from .distributed import check_masks_synced, unwrap
from .loop import Callback, FitResult, TrainState, as_dataset, fit, make_optimizer

log = logging.getLogger(__name__)

OPTIMIZER_STATE_POLICIES = ("reset", "rewind", "keep")


@dataclass
class RewindPoint(Callback):
    """Saves the model's state (weights and buffers) and the optimizer state after ``step`` optimizer steps."""

    step: int = 0
    weights: dict[str, Tensor] | None = field(default=None, init=False, repr=False)
    optimizer_state: dict[str, Any] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.step, bool) or not isinstance(self.step, int) or self.step < 0:
            raise ValueError(f"rewind step must be an integer >= 0, got {self.step!r}")

    def on_fit_start(self, state: TrainState) -> None:
        if self.step > state.total_steps:
            raise ValueError(f"rewind step {self.step} is beyond the training length ({state.total_steps} steps)")
        if state.step == self.step:
            self.capture(state)

    def on_step_end(self, state: TrainState, batch: Any) -> None:
        if state.step == self.step:
            self.capture(state)

    @torch.no_grad()
    def capture(self, state: TrainState) -> None:
        """Copy the weights and optimizer state now."""
        self.weights = {k: v.detach().clone() for k, v in unwrap(state.model).state_dict().items()}
        self.optimizer_state = copy.deepcopy(state.optimizer.state_dict())

    @torch.no_grad()
    def rewind_(self, model: nn.Module) -> None:
        """Load the saved weights into ``model``; attached masks are re-applied (pruned weights stay zero)."""
        if self.weights is None:
            raise RuntimeError(f"no weights were saved at step {self.step} (training ended before it?)")
        net = unwrap(model)
        net.load_state_dict(self.weights)
        ms = attached(net)
        if ms is not None:
            ms.apply_()


@dataclass
class Level:
    """One IMP level: its sparsity, the final training record, the masks, the time it took."""

    level: int
    sparsity: float
    metrics: dict[str, float]
    seconds: float
    masks: dict[str, Tensor] | None = field(default=None, repr=False)


@dataclass
class IMPResult:
    """What ``iterative_magnitude`` returns: every level, the rewind point, the settings."""

    levels: list[Level]
    rewind: RewindPoint | None
    settings: dict[str, Any]

    def masks(self, level: int = -1) -> dict[str, Tensor]:
        """The masks of ``level`` (the last by default)."""
        m = self.levels[level].masks
        if m is None:
            raise ValueError(f"level {level} kept no masks (dense level 0, or keep_masks=False)")
        return m


def total_steps(data: Any, *, epochs: int | None = None, steps: int | None = None, batch_size: int = 128,
                sampler: Any = None) -> int:
    """Optimizer steps ``fit`` will run for these arguments."""
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs= or steps= (a positive integer)")
    if steps is not None:
        return int(steps)
    n = len(sampler) if sampler is not None else len(as_dataset(data))
    return int(epochs) * math.ceil(n / batch_size)  # type: ignore[arg-type]


def _validate(fraction: float, rounds: int | None, target_sparsity: float | None, rewind_step: int | None,
              optimizer_state: str, fit_kwargs: dict[str, Any], data: Any) -> int:
    check_fraction(fraction, "fraction", high_closed=False)
    if (rounds is None) == (target_sparsity is None):
        raise ValueError("give exactly one of rounds= (pruning rounds) or target_sparsity= (a number in [0, 1))")
    if target_sparsity is not None:
        check_sparsity(target_sparsity, "target_sparsity")
        rounds = Iterative.rounds_for(target_sparsity, fraction)
    Iterative(fraction, rounds)  # type: ignore[arg-type]  (validates rounds >= 1)
    check_choice(optimizer_state, "optimizer_state", OPTIMIZER_STATE_POLICIES)
    if rewind_step is None and optimizer_state == "rewind":
        raise ValueError("optimizer_state='rewind' needs rewind_step (an integer); with rewind_step=None "
                         "(fine-tuning) use 'reset' or 'keep'")
    if isinstance(fit_kwargs.get("optimizer"), torch.optim.Optimizer):
        raise ValueError("pass optimizer= as a name ('sgd', 'adamw', 'adam') or a factory: each level builds its own")
    total = total_steps(data, epochs=fit_kwargs.get("epochs"), steps=fit_kwargs.get("steps"),
                        batch_size=fit_kwargs.get("batch_size", 128), sampler=fit_kwargs.get("sampler"))
    if rewind_step is not None:
        if isinstance(rewind_step, bool) or not isinstance(rewind_step, int) or rewind_step < 0:
            raise ValueError(f"rewind_step must be an integer >= 0 or None (fine-tune), got {rewind_step!r}")
        if rewind_step > total:
            raise ValueError(f"rewind_step={rewind_step} is beyond the training length ({total} steps)")
    return int(rounds)  # type: ignore[arg-type]


def _new_optimizer(model: nn.Module, fit_kwargs: dict[str, Any]) -> torch.optim.Optimizer:
    return make_optimizer(fit_kwargs.get("optimizer", "sgd"), model.parameters(), fit_kwargs.get("lr", 0.1),
                          fit_kwargs.get("weight_decay", 5e-4), fit_kwargs.get("momentum", 0.9))


def _level_optimizer(model: nn.Module, policy: str, previous: torch.optim.Optimizer, rewind: RewindPoint | None,
                     fit_kwargs: dict[str, Any]) -> torch.optim.Optimizer:
    if policy == "keep":
        return previous
    opt = _new_optimizer(model, fit_kwargs)
    if policy == "rewind":
        assert rewind is not None and rewind.optimizer_state is not None
        opt.load_state_dict(copy.deepcopy(rewind.optimizer_state))
    return opt


def iterative_magnitude(
    model: nn.Module,
    data: Any,
    *,
    rounds: int | None = None,
    target_sparsity: float | None = None,
    fraction: float = 0.2,
    rewind_step: int | None = 0,
    optimizer_state: str = "reset",
    scope: str = "global",
    allocation: str | None = None,
    max_layer_sparsity: float = 0.99,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    callbacks: Sequence[Callback] = (),
    keep_masks: bool = True,
    exact_target: bool = False,
    soup: int = 1,
    **fit_kwargs: Any,
) -> IMPResult:
    """IMP: train, prune ``fraction`` of the remaining weights, rewind (or fine-tune), repeat; ``fit_kwargs``
    (``epochs`` or ``steps``, ``lr``, ``optimizer``...) are the recipe of every level.

    ``exact_target=True`` (with ``target_sparsity``): the last level prunes to exactly ``target_sparsity``
    instead of 1 - (1 - fraction)^rounds, which overshoots it unless the two line up. ``soup=k > 1``: every
    pruned level trains ``k`` ingredients (seeds ``seed + i``) and keeps their average (Sparse Model Soups)."""
    rounds = _validate(fraction, rounds, target_sparsity, rewind_step, optimizer_state, fit_kwargs, data)
    _check_soup(soup)
    if exact_target and target_sparsity is None:
        raise ValueError("exact_target=True needs target_sparsity= (the final sparsity)")
    Magnitude(0.5, scope=scope, allocation=allocation, max_layer_sparsity=max_layer_sparsity, exclude=list(exclude))
    schedule = Iterative(fraction, rounds)
    settings = {"fraction": fraction, "rounds": rounds, "rewind_step": rewind_step, "scope": scope,
                "optimizer_state": optimizer_state, "allocation": allocation, "soup": soup}
    if exact_target:
        settings["target_sparsity"] = float(target_sparsity)  # type: ignore[arg-type]
    rewind = RewindPoint(rewind_step) if rewind_step is not None else None
    t0 = time.perf_counter()
    res = fit(model, data, callbacks=[*([rewind] if rewind else []), *callbacks], **fit_kwargs)
    levels = [Level(0, 0.0, res.final, time.perf_counter() - t0)]
    log.info("IMP level 0 (dense): %s", res.final)
    for r in range(1, rounds + 1):
        t0 = time.perf_counter()
        s_r = schedule.sparsity_at(r)
        if exact_target and target_sparsity is not None:
            s_r = float(target_sparsity) if r == rounds else min(s_r, float(target_sparsity))
        res = _train_level(model, data, s_r, res, rewind, optimizer_state, scope, allocation,
                           max_layer_sparsity, exclude, callbacks, fit_kwargs, soup)
        ms = attached(unwrap(model))
        assert ms is not None
        masks = {k: m.detach().clone() for k, m in ms.masks.items()} if keep_masks else None
        levels.append(Level(r, ms.sparsity(), res.final, time.perf_counter() - t0, masks))
        log.info("IMP level %d (sparsity %.4f): %s", r, ms.sparsity(), res.final)
    return IMPResult(levels, rewind, settings)


def _train_level(model: nn.Module, data: Any, sparsity: float, previous: FitResult, rewind: RewindPoint | None,
                 policy: str, scope: str, allocation: str | None, max_layer_sparsity: float, exclude: Sequence[str],
                 callbacks: Sequence[Callback], fit_kwargs: dict[str, Any], soup: int = 1) -> FitResult:
    net = unwrap(model)
    cfg = Magnitude(sparsity, scope=scope, allocation=allocation, max_layer_sparsity=max_layer_sparsity,
                    exclude=list(exclude))
    report = prune_scored_(net, cfg, "magnitude")  # what is pruned stays pruned
    assert report.masks is not None
    check_masks_synced(report.masks.masks, f"after pruning to sparsity {sparsity:.4f}")
    if rewind is not None:
        rewind.rewind_(net)
    if soup > 1:
        return _train_soup(model, data, report.masks, previous, rewind, policy, callbacks, fit_kwargs, soup)
    opt = _level_optimizer(model, policy, previous.state.optimizer, rewind, fit_kwargs)
    report.masks.watch(opt)
    start = rewind.step if rewind is not None else 0
    device = torch.device(fit_kwargs.get("device", "cpu"))
    state = TrainState(model, opt, 0, 0, device, step=start)
    return fit(model, data, state=state, callbacks=list(callbacks), **fit_kwargs)


def _check_soup(soup: int) -> None:
    if isinstance(soup, bool) or not isinstance(soup, int) or soup < 1:
        raise ValueError(f"soup must be an integer >= 1 (models averaged per level; 1 = plain IMP), got {soup!r}")


def average_states(states: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Uniform soup (Wortsman et al. 2022, "Model soups", Eq. 1): the mean of every floating tensor; integer
    buffers (BatchNorm step counters) from the first state."""
    return {k: torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype) if v.is_floating_point()
            else v.clone() for k, v in states[0].items()}


def _train_soup(model: nn.Module, data: Any, masks: Any, previous: FitResult, rewind: RewindPoint | None,
                policy: str, callbacks: Sequence[Callback], fit_kwargs: dict[str, Any], k: int) -> FitResult:
    """Sparse Model Soups (Zimmer et al. 2024, Alg. 1): ``k`` retrains from one start under one mask, averaged."""
    net = unwrap(model)
    start_w = {n: v.detach().clone() for n, v in net.state_dict().items()}
    prev_opt = copy.deepcopy(previous.state.optimizer.state_dict()) if policy == "keep" else None
    states, res = [], previous
    base_seed = fit_kwargs.get("seed", 0) or 0
    for i in range(k):
        net.load_state_dict(start_w)
        opt = _level_optimizer(model, "reset" if policy == "keep" else policy, previous.state.optimizer, rewind,
                               fit_kwargs)
        if prev_opt is not None:
            opt.load_state_dict(copy.deepcopy(prev_opt))
        masks.watch(opt)
        state = TrainState(model, opt, 0, 0, torch.device(fit_kwargs.get("device", "cpu")),
                           step=rewind.step if rewind is not None else 0)
        res = fit(model, data, state=state, callbacks=list(callbacks), **{**fit_kwargs, "seed": base_seed + i})
        states.append({n: v.detach().clone() for n, v in net.state_dict().items()})
    net.load_state_dict(average_states(states))
    masks.apply_()
    return _soup_metrics(model, res, fit_kwargs, k)


def _soup_metrics(model: nn.Module, res: FitResult, fit_kwargs: dict[str, Any], k: int) -> FitResult:
    """The last ingredient's record with the soup's own validation metrics (where ``val_data`` is given)."""
    from .loop import evaluate

    final = dict(res.final)
    final["soup_ingredients"] = float(k)
    if fit_kwargs.get("val_data") is not None:
        for key, v in evaluate(model, fit_kwargs["val_data"]).items():
            final[f"val_{key}"] = v
    res.history.append(final)
    return res


def lottery_ticket(model: nn.Module, data: Any, sparsity: float, *, rewind_step: int = 0, fraction: float = 0.2,
                   **kwargs: Any) -> IMPResult:
    """Find a lottery ticket at ``sparsity``: IMP with rewinding to ``rewind_step`` (0 = the original LTH)."""
    if rewind_step is None:
        raise ValueError("lottery_ticket rewinds: rewind_step must be an integer >= 0 (use iterative_magnitude "
                         "with rewind_step=None to fine-tune instead)")
    return iterative_magnitude(model, data, target_sparsity=sparsity, fraction=fraction, rewind_step=rewind_step,
                               **kwargs)


@dataclass
class IMP(Config):
    """Iterative magnitude pruning with rewinding, lottery tickets (Frankle & Carbin 2019; Frankle et al. 2020).

    Each level prunes ``fraction`` of the remaining weights by magnitude (the last one exactly to
    ``sparsity``), rewinds the survivors to their values at ``rewind_step`` (``None``: fine-tune the trained
    weights instead) and trains again with the level recipe; ``optimizer_state`` is ``reset``, ``rewind``
    or ``keep`` (see the module docstring). Levels: the fewest that reach ``sparsity``. ``soup``: models
    retrained and averaged per level (Sparse Model Soups, Zimmer et al. 2024; 1 = plain IMP).
    """

    sparsity: float = 0.8
    fraction: float = 0.2
    rewind_step: int | None = 0
    optimizer_state: str = "reset"
    scope: str = "global"
    allocation: str | None = None
    max_layer_sparsity: float = 0.99
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    soup: int = 1

    def validate(self) -> None:
        check_sparsity(self.sparsity, "sparsity")
        _check_soup(self.soup)
        check_fraction(self.fraction, "fraction", high_closed=False)
        check_choice(self.optimizer_state, "optimizer_state", OPTIMIZER_STATE_POLICIES)
        if self.rewind_step is None and self.optimizer_state == "rewind":
            raise ValueError("optimizer_state='rewind' needs rewind_step (an integer); with rewind_step=None "
                             "(fine-tuning) use 'reset' or 'keep'")
        if self.rewind_step is not None and (isinstance(self.rewind_step, bool) or
                                             not isinstance(self.rewind_step, int) or self.rewind_step < 0):
            raise ValueError(f"rewind_step must be an integer >= 0 or None (fine-tune), got {self.rewind_step!r}")
        Magnitude(0.5, scope=self.scope, allocation=self.allocation, max_layer_sparsity=self.max_layer_sparsity,
                  exclude=list(self.exclude))  # validates scope, allocation and the cap
        self.exclude = list(self.exclude)

    @property
    def levels(self) -> int:
        """Pruning levels after the dense one: the fewest whose schedule reaches ``sparsity``."""
        return Iterative.rounds_for(self.sparsity, self.fraction)


def run_imp(model: nn.Module, config: IMP, data: Any, *, callbacks: Sequence[Callback] = (),
            **fit_kwargs: Any) -> IMPResult:
    """Run the IMP driver of ``config`` on ``model`` and ``data``; ``fit_kwargs`` is the recipe of every level."""
    return iterative_magnitude(model, data, target_sparsity=config.sparsity, fraction=config.fraction,
                               rewind_step=config.rewind_step, optimizer_state=config.optimizer_state,
                               scope=config.scope, allocation=config.allocation,
                               max_layer_sparsity=config.max_layer_sparsity, exclude=config.exclude,
                               callbacks=callbacks, exact_target=True, soup=config.soup, **fit_kwargs)


ModelFactory = Callable[[], nn.Module]


def _post_order(net: nn.Module) -> list[nn.Module]:
    """Every submodule, children before their parent (the order in which construction initializes them)."""
    out: list[nn.Module] = []
    for child in net.children():
        out.extend(_post_order(child))
    out.append(net)
    return out


def _required_args(fn: Callable[..., Any]) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return -1
    return sum(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def _initializer(mod: nn.Module) -> Callable[[], None] | None:
    """The module's own way to draw its weights: ``reset_parameters`` (public or private ``_reset_parameters``),
    else a model-level ``init_weights()`` or per-module ``_init_weights(module)`` / ``init_weights(module)``."""
    for attr in ("reset_parameters", "_reset_parameters", "init_weights", "_init_weights"):
        fn = getattr(mod, attr, None)
        if not callable(fn):
            continue
        n = _required_args(fn)
        if n == 0:
            return fn
        if n == 1 and attr.endswith("init_weights"):
            return lambda fn=fn: mod.apply(fn)  # HF style: called on every submodule, children first
    return None


def _hf_factory(net: nn.Module) -> ModelFactory | None:
    """A fresh instance of a transformers ``PreTrainedModel`` from its config (its ``_init_weights`` runs)."""
    if not any(c.__name__ == "PreTrainedModel" for c in type(net).__mro__) or not hasattr(net, "config"):
        return None
    return lambda: type(net)(copy.deepcopy(net.config))


def _zoo_factory(spec: Mapping[str, Any]) -> ModelFactory:
    from ..zoo import get_model

    if "name" not in spec:
        raise ValueError(f"factory as a zoo model spec needs 'name' (and optional 'kwargs'), got keys {sorted(spec)}")
    return lambda: get_model(spec["name"], **dict(spec.get("kwargs", {})))


@torch.no_grad()
def _load_fresh(net: nn.Module, fresh: nn.Module) -> None:
    """Copy a freshly built model's parameters and persistent buffers into ``net`` (same architecture)."""
    mine, theirs = net.state_dict(), fresh.state_dict()
    wrong = sorted(set(mine) ^ set(theirs)) + sorted(k for k in mine if k in theirs and
                                                    mine[k].shape != theirs[k].shape)
    if wrong:
        raise ValueError(f"factory built a model that differs from the one to re-initialize at {wrong[:10]}: it "
                         "must build the same architecture (e.g. the zoo spec the model came from)")
    for k, v in mine.items():
        v.copy_(theirs[k])


@torch.no_grad()
def _redraw_in_place(net: nn.Module) -> None:
    """Run every module's own initializer, children first; raise naming parameters none of them redrew."""
    params = dict(net.named_parameters())
    before = {k: p.detach().clone() for k, p in params.items()}
    versions = {k: p._version for k, p in params.items()}  # bumped by every in-place write (init functions)
    covered: set[str] = set()
    for name, mod in net.named_modules():
        if _initializer(mod) is not None:
            covered.update(f"{name}.{k}" if name else k for k, _ in mod.named_parameters())
    uncovered = sorted(set(before) - covered)
    if uncovered:
        raise ValueError(_not_redrawn(uncovered, "no reset_parameters()/_reset_parameters()/init_weights() of "
                                                 "their module or of a module above covers them"))
    for mod in _post_order(net):
        init = _initializer(mod)
        if init is not None:
            init()
    stale = sorted(k for k, p in params.items() if p._version == versions[k])
    if stale:
        for k, p in params.items():
            p.copy_(before[k])  # the model is left as it was
        raise ValueError(_not_redrawn(stale, "their module's initializer never wrote them"))


def _not_redrawn(names: list[str], why: str) -> str:
    return (f"cannot redraw parameters {names}: {why}. Pass factory= (a function that builds a fresh model of "
            "the same architecture, or a zoo spec {'name': ..., 'kwargs': ...}), or give their module a "
            "reset_parameters(); the model was left unchanged")


@torch.no_grad()
def reinitialize_(model: nn.Module, seed: int, factory: ModelFactory | Mapping[str, Any] | None = None) -> nn.Module:
    """Redraw every parameter with the model's own initializer under ``seed``; attached masks are re-applied.

    With ``factory`` (a function building the same architecture, or a zoo spec ``{"name", "kwargs"}``)
    the weights are those of a fresh instance built under ``seed``; a transformers model is rebuilt from
    its config. Otherwise every module's ``reset_parameters`` / ``_reset_parameters`` runs children
    first (so ``nn.MultiheadAttention`` redraws its ``in_proj``), then a model's own ``init_weights()`` or
    ``_init_weights(module)``; a parameter none of them redraws is an error that names it.
    """
    net = unwrap(model)
    make = _zoo_factory(factory) if isinstance(factory, Mapping) else factory or _hf_factory(net)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if make is not None:
            _load_fresh(net, make())
        else:
            _redraw_in_place(net)
    ms = attached(net)
    if ms is not None:
        ms.apply_()
    return model


def random_reinit_control(model: nn.Module, masks: dict[str, Tensor], data: Any, *, seed: int,
                          factory: ModelFactory | Mapping[str, Any] | None = None, **fit_kwargs: Any) -> FitResult:
    """The LTH control: ``masks`` on freshly drawn initial weights (``seed``; see ``reinitialize_`` for
    ``factory``), trained with ``fit_kwargs``."""
    net = unwrap(model)
    reinitialize_(net, seed, factory)  # raises before anything is attached if some weight cannot be redrawn
    attach(net, {k: m.clone() for k, m in masks.items()})
    return fit(model, data, **fit_kwargs)
