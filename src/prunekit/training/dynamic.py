"""Dynamic sparse training: SET, RigL and GraNet as callbacks on ``fit``.

Every ``update_every`` steps a fraction of each layer's active weights is dropped (smallest |W|)
and as many inactive ones are grown (SET: at random; RigL and GraNet: largest dense gradient), so
the number of active weights per layer is the same before and after (``drop_grow``). Grown weights
start at exactly zero and their optimizer moments (momentum, Adam's m and v) are reset to zero.
Dense gradients are read only on update steps, between backward and the optimizer step (a watched
``MaskSet`` masks gradients in its step pre-hook; an unwatched one's gradient hooks are switched off
for that one backward pass, ``MaskSet.mask_grads``); the optimizer always receives masked gradients.

Under DDP the dense gradients arrive averaged over ranks (or are averaged here when the model is not
wrapped), weights are equal on every rank and SET's generator is seeded the same, so every rank
computes the same masks; ``check_masks_synced`` verifies it after each update.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .. import allocation as alloc
from ..errors import check_choice, check_sparsity
from ..layers import Ledger, WeightInfo, ledger_of
from ..masks import DEFAULT_EXCLUDE, MaskSet, attach, attached
from ..oneshot import weight_mask
from ..patterns import topk_units
from ..schedules import CosineDecay, Cubic
from .distributed import all_reduce_mean_, check_masks_synced, is_ddp, unwrap, world_size
from .loop import Batch, Callback, TrainState
from .pai import random_masks

log = logging.getLogger(__name__)

ANNEALS = ("cosine", "constant")


# ------------------------------------------------------------------------------------------------
# pure tensor functions


def drop_grow(mask: Tensor, drop_score: Tensor, grow_score: Tensor, k: int) -> Tensor:
    """Drop the ``k`` active units with the lowest ``drop_score``, then grow the ``k`` units with the highest
    ``grow_score`` among those not kept (a just-dropped unit may come back). Active count is unchanged."""
    flat = mask.reshape(-1)
    n_active = int(flat.sum())
    k = max(0, min(int(k), n_active))
    neg = torch.tensor(-math.inf, device=mask.device)
    keep = topk_units(torch.where(flat, drop_score.reshape(-1).float(), neg), n_active - k)  # (n,)
    grow = topk_units(torch.where(keep, neg, grow_score.reshape(-1).float()), k)  # (n,)
    return (keep | grow).reshape(mask.shape)


def drop_grow_matrices(info: WeightInfo, mask: Tensor, drop_score: Tensor, grow_score: Tensor,
                       fraction: float) -> Tensor:
    """``drop_grow`` of ``round(fraction * active)`` units in each matrix of a weight: each expert of a fused
    ``(E, out, in)`` tensor on its own, so every expert keeps its active count; a plain weight is one matrix."""
    if info.groups == 1:
        return drop_grow(mask, drop_score, grow_score, update_count(fraction, int(mask.sum())))
    views = zip(*(info.as_matrices(t) for t in (mask, drop_score, grow_score)))  # (out, in) each
    return info.from_matrices(torch.stack([drop_grow(m, d, g, update_count(fraction, int(m.sum())))
                                           for m, d, g in views]))


def masks_ledger(ms: MaskSet) -> Ledger:
    """The ledger of the tensors a ``MaskSet`` masks (their orientation and expert matrices)."""
    return ledger_of(ms.model, ms.masks)


def update_count(fraction: float, n_active: int) -> int:
    """Units to drop and grow: ``round(fraction * n_active)``."""
    return int(round(fraction * n_active))


@torch.no_grad()
def reset_grown_(param: Tensor, grown: Tensor, optimizers: list[torch.optim.Optimizer]) -> None:
    """Set newly grown weights to exactly zero and zero their optimizer state (every tensor shaped like them)."""
    param.masked_fill_(grown, 0.0)
    for opt in optimizers:
        for v in opt.state.get(param, {}).values():
            if torch.is_tensor(v) and v.shape == param.shape:
                v.masked_fill_(grown, 0)


def annealed_fraction(schedule: CosineDecay, anneal: str, step: int) -> float:
    """The update fraction at ``step``: RigL's cosine decay (Evci et al. 2020, eq. 1) or constant alpha."""
    if anneal == "constant":
        return schedule.alpha if step < schedule.end_step else 0.0
    return schedule.fraction_at(step)


# ------------------------------------------------------------------------------------------------
# callbacks


def _check_update_fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"update_fraction (alpha, the fraction of active weights dropped and regrown) must be "
                         f"in (0, 1), got {value!r}")
    return float(value)


def _check_int(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


@dataclass
class _DynamicSparse(Callback):
    """Shared shell of SET and RigL: masks, schedule, dense-gradient steps, drop/grow, history."""

    sparsity: float | None = 0.9
    update_fraction: float = 0.3
    update_every: int = 100
    end_step: int | None = None
    allocation: str = "erk"
    anneal: str = "cosine"
    seed: int = 0
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    history: list[dict[str, Any]] = field(default_factory=list, init=False)
    schedule: CosineDecay | None = field(default=None, init=False, repr=False)
    _grads: dict[str, Tensor] = field(default_factory=dict, init=False, repr=False)
    needs_dense_grads = True

    def __post_init__(self) -> None:
        if self.sparsity is not None:
            check_sparsity(self.sparsity)
        _check_update_fraction(self.update_fraction)
        _check_int(self.update_every, "update_every", 1)
        if self.end_step is not None:
            _check_int(self.end_step, "end_step", 1)
        check_choice(self.allocation, "allocation", ("uniform", "er", "erk"))
        check_choice(self.anneal, "anneal", ANNEALS)
        self.exclude = list(self.exclude)

    def on_fit_start(self, state: TrainState) -> None:
        end = self.end_step if self.end_step is not None else max(1, int(0.75 * state.total_steps))
        if end > state.total_steps:
            raise ValueError(f"end_step={end} is beyond the training length ({state.total_steps} steps)")
        self.schedule = CosineDecay(self.update_fraction, self.update_every, end)
        ms = self._masks_at_start(state)
        ms.watch(state.optimizer)
        check_masks_synced(ms.masks, "at the start of training")

    def _masks_at_start(self, state: TrainState) -> MaskSet:
        net = unwrap(state.model)
        ms = attached(net)
        if self.sparsity is None or (ms is not None and state.step > 0):
            if ms is None:
                raise ValueError(f"{type(self).__name__}(sparsity=None) uses the masks already attached to the "
                                 "model, but none are: attach masks first or give a sparsity")
            return ms
        return attach(net, random_masks(net, self.sparsity, allocation=self.allocation, seed=self.seed,
                                        exclude=self.exclude))

    def is_update(self, step: int) -> bool:
        """True when a drop/grow happens after optimizer step ``step``."""
        return self.schedule is not None and self.schedule.is_update_step(step)

    def on_batch_start(self, state: TrainState, batch: Batch) -> None:
        """Before the backward pass of an update step, let dense gradients through the mask hook."""
        if self.needs_dense_grads and self.is_update(state.step + 1):
            self._mask_set(state).mask_grads = False  # this backward pass keeps dense gradients

    def on_after_backward(self, state: TrainState, batch: Batch) -> None:
        """Keep a copy of the dense gradients (averaged over ranks), then mask them for the optimizer step."""
        ms = self._mask_set(state)
        if ms.mask_grads:
            return
        ms.mask_grads = True
        self._grads = {k: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
                       for k, p in ms.params.items()}
        if world_size() > 1 and not is_ddp(state.model):
            all_reduce_mean_(list(self._grads.values()))
        with torch.no_grad():
            for k, p in ms.params.items():  # the optimizer step itself stays sparse
                if p.grad is not None:
                    p.grad.mul_(ms.masks[k])

    def on_step_end(self, state: TrainState, batch: Batch) -> None:
        """On update steps: drop and grow in every layer, then check the masks agree across ranks."""
        if not self.is_update(state.step):
            return
        assert self.schedule is not None
        fraction = annealed_fraction(self.schedule, self.anneal, state.step)
        ms = self._mask_set(state)
        changed = self._drop_grow(ms, fraction, self._grads, [state.optimizer])
        self._grads = {}
        check_masks_synced(ms.masks, f"after the mask update at step {state.step}")
        self.history.append({"step": state.step, "fraction": fraction, "changed": changed})
        log.debug("step %d: drop/grow fraction %.4f, %d weights moved", state.step, fraction, changed)

    def _drop_grow(self, ms: MaskSet, fraction: float, grads: dict[str, Tensor],
                   optimizers: list[torch.optim.Optimizer]) -> int:
        new, changed, ledger = {}, 0, masks_ledger(ms)
        for k, p in ms.params.items():
            old = ms.masks[k]
            new[k] = drop_grow_matrices(ledger.prunable[k], old, p.detach().abs(), self.grow_score(k, p, grads),
                                        fraction)
            grown = new[k] & ~old
            reset_grown_(p, grown, optimizers)
            changed += int(grown.sum())
        ms.update_(new)
        return changed

    def grow_score(self, name: str, param: Tensor, grads: dict[str, Tensor]) -> Tensor:
        """Score of each inactive weight for growing; higher grows first."""
        raise NotImplementedError

    def _mask_set(self, state: TrainState) -> MaskSet:
        ms = attached(unwrap(state.model))
        if ms is None:
            raise RuntimeError(f"{type(self).__name__}: the masks were detached during training")
        return ms

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state.get("history", [])]


@dataclass
class RigL(_DynamicSparse):
    """RigL (Evci et al. 2020, "Rigging the Lottery", Algorithm 1): every ``update_every`` steps drop the
    alpha_t fraction of active weights with the smallest |W| and grow as many with the largest dense
    |dL/dW|; alpha_t = alpha/2 (1 + cos(pi t / T_end)) (eq. 1); grown weights start at zero with zeroed
    optimizer moments. Initial masks: random with ``allocation`` (ERK by default), exact per layer."""

    def grow_score(self, name: str, param: Tensor, grads: dict[str, Tensor]) -> Tensor:
        return grads[name].abs()


@dataclass
class SET(_DynamicSparse):
    """SET (Mocanu et al. 2018, "Sparse Evolutionary Training"): drop the smallest |W|, grow at random.

    Uses the same update schedule as ``RigL`` (cosine-decayed fraction by default, as in the RigL
    paper's comparison; ``anneal="constant"`` keeps zeta fixed as in SET). Growth draws from a generator
    seeded with ``seed``, equal on every rank; grown weights start at zero.
    """

    allocation: str = "er"
    _gen: torch.Generator | None = field(default=None, init=False, repr=False)
    needs_dense_grads = False

    def on_fit_start(self, state: TrainState) -> None:
        if self._gen is None:
            self._gen = torch.Generator().manual_seed(int(self.seed) + 1)
        super().on_fit_start(state)

    def grow_score(self, name: str, param: Tensor, grads: dict[str, Tensor]) -> Tensor:
        assert self._gen is not None
        return torch.rand(param.shape, generator=self._gen).to(param.device)

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        if self._gen is not None:
            out["generator"] = self._gen.get_state()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "generator" in state:
            self._gen = torch.Generator()
            self._gen.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8))


@dataclass
class GraNet(_DynamicSparse):
    """GraNet (Liu et al. 2021, "Sparse Training via Boosting Pruning Plasticity with Neuroregeneration"):
    gradual magnitude pruning on the cubic schedule s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 (Zhu &
    Gupta 2017, eq. 1) plus neuroregeneration: after each pruning step, drop the alpha_t fraction of active
    weights with the smallest |W| and regrow as many with the largest dense |dL/dW| (cosine-decayed alpha_t).

    ``initial_sparsity=0`` starts dense (dense-to-sparse); > 0 starts from random ``allocation`` masks
    (sparse-to-sparse). Pruning ranks all layers at once (``scope="global"``, as the paper) or keeps each
    layer's share of the initial density (``scope="layer"``).
    """

    sparsity: float | None = 0.9
    initial_sparsity: float = 0.0
    begin_step: int | None = None
    scope: str = "global"
    max_layer_sparsity: float = 0.99
    prune_schedule: Cubic | None = field(default=None, init=False, repr=False)
    _density0: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    cap_binding: dict[str, Any] | None = field(default=None, init=False, repr=False)  # max_layer_sparsity held

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sparsity is None:
            raise ValueError("GraNet needs sparsity= (the final sparsity), a number in [0, 1)")
        check_sparsity(self.initial_sparsity, "initial_sparsity")
        if self.initial_sparsity > self.sparsity:
            raise ValueError(f"initial_sparsity={self.initial_sparsity} is above the final sparsity={self.sparsity}")
        check_choice(self.scope, "scope", ("global", "layer"))
        if self.begin_step is not None:
            _check_int(self.begin_step, "begin_step", 0)

    def on_fit_start(self, state: TrainState) -> None:
        total = state.total_steps
        end = self.end_step if self.end_step is not None else max(1, int(0.75 * total))
        begin = self.begin_step if self.begin_step is not None else 0
        if end > total:
            raise ValueError(f"end_step={end} is beyond the training length ({total} steps)")
        if begin >= end:
            raise ValueError(f"begin_step={begin} must be below end_step={end}")
        self.prune_schedule = Cubic(float(self.sparsity), begin, end, self.update_every, self.initial_sparsity)
        self.schedule = CosineDecay(self.update_fraction, self.update_every, end)
        ms = self._masks_at_start(state)
        if not self._density0:
            self._density0 = {k: float(m.float().mean()) for k, m in ms.masks.items()}
        ms.watch(state.optimizer)
        check_masks_synced(ms.masks, "at the start of training")

    def _masks_at_start(self, state: TrainState) -> MaskSet:
        net = unwrap(state.model)
        ms = attached(net)
        if ms is not None and state.step > 0:
            return ms
        if self.initial_sparsity > 0:
            masks = random_masks(net, self.initial_sparsity, allocation=self.allocation, seed=self.seed,
                                 exclude=self.exclude)
        else:
            from ..masks import prunable_parameters

            masks = {k: torch.ones_like(p, dtype=torch.bool)
                     for k, p in prunable_parameters(net, exclude=self.exclude).items()}
        return attach(net, masks)

    def is_update(self, step: int) -> bool:
        return self.prune_schedule is not None and self.prune_schedule.is_update_step(step)

    def on_step_end(self, state: TrainState, batch: Batch) -> None:
        """On update steps: prune to the cubic schedule's sparsity, then regenerate (drop/grow)."""
        if not self.is_update(state.step):
            return
        assert self.prune_schedule is not None and self.schedule is not None
        ms = self._mask_set(state)
        s_t = self.prune_schedule.sparsity_at(state.step)
        ms.update_(self._prune_to(ms, s_t))
        fraction = self.schedule.fraction_at(state.step)
        changed = self._drop_grow(ms, fraction, self._grads, [state.optimizer]) if fraction > 0 else 0
        self._grads = {}
        check_masks_synced(ms.masks, f"after the mask update at step {state.step}")
        self.history.append({"step": state.step, "sparsity": s_t, "fraction": fraction, "changed": changed})

    def _prune_to(self, ms: MaskSet, sparsity: float) -> dict[str, Tensor]:
        """Magnitude masks at ``sparsity`` that never revive a pruned weight while a layer has active ones."""
        scores = {k: p.detach().abs().float().masked_fill(~ms.masks[k], -math.inf) for k, p in ms.params.items()}
        sizes = {k: m.numel() for k, m in ms.masks.items()}
        if self.scope == "global":
            targets = alloc.global_({k: s.reshape(-1) for k, s in scores.items()}, sparsity, self.max_layer_sparsity,
                                    warn=False)
        else:
            scale = (1.0 - sparsity) / max(1e-12, 1.0 - self.initial_sparsity)
            dens = {k: self._density0[k] * scale for k in sizes}
            targets = alloc.from_densities(dens, sizes, sparsity, self.max_layer_sparsity, rule="granet", warn=False)
        if targets.binding is not None and self.cap_binding is None:  # logged once, not at every update
            self.cap_binding = targets.binding
            log.warning("GraNet: %s", alloc.describe_binding(targets.binding))
        ledger = masks_ledger(ms)
        return {k: weight_mask(ledger, k, scores[k], targets[k]) for k in scores}

    def grow_score(self, name: str, param: Tensor, grads: dict[str, Tensor]) -> Tensor:
        return grads[name].abs()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "density0": dict(self._density0)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._density0 = {k: float(v) for k, v in state.get("density0", {}).items()}


def active_counts(masks: dict[str, Tensor]) -> dict[str, int]:
    """Kept weights per layer."""
    return {k: int(m.sum()) for k, m in masks.items()}

