"""Gradual pruning as training callbacks on the cubic schedule of Zhu & Gupta 2017 ("To prune, or not to
prune"): by magnitude (``GradualMagnitude``) or by accumulated movement (``GradualMovement``, Sanh et al. 2020)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..masks import DEFAULT_EXCLUDE, Report, attach, attached, prunable_parameters
from ..oneshot import Magnitude, prune_scored_
from ..patterns import NM, Pattern, Unstructured, parse_pattern
from ..schedules import Cubic
from .distributed import all_reduce_mean_, check_masks_synced, is_ddp, unwrap, world_size
from .loop import Batch, Callback, TrainState

log = logging.getLogger(__name__)


@dataclass
class GradualMagnitude(Callback):
    """Raise sparsity along the cubic schedule s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 (eq. 1).

    At each update step the smallest-magnitude surviving weights are masked (layer or global scope);
    masked weights stay exactly zero, their optimizer moments too. ``begin_step`` / ``end_step``
    default to 10% / 75% of the run and ``frequency`` to 1/20 of the pruning window.
    """

    final_sparsity: float
    begin_step: int | None = None
    end_step: int | None = None
    frequency: int | None = None
    initial_sparsity: float = 0.0
    pattern: Pattern = field(default_factory=Unstructured)
    scope: str = "layer"
    allocation: str | None = None
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    schedule: Cubic | None = field(default=None, init=False)
    history: list[tuple[int, float]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.pattern = parse_pattern(self.pattern)
        if isinstance(self.pattern, NM):
            raise ValueError("GradualMagnitude needs a pattern whose sparsity can grow (unstructured, block, "
                             f"channel); {self.pattern} has a fixed sparsity: use prune_ or N:M training instead")
        # validates sparsity, scope and allocation before any training
        Magnitude(self.final_sparsity, pattern=self.pattern, scope=self.scope, allocation=self.allocation)

    def on_fit_start(self, state: TrainState) -> None:
        total = state.total_steps
        begin = self.begin_step if self.begin_step is not None else int(0.1 * total)
        end = self.end_step if self.end_step is not None else max(begin + 1, int(0.75 * total))
        freq = self.frequency if self.frequency is not None else max(1, (end - begin) // 20)
        if end > total:
            raise ValueError(f"end_step={end} is beyond the training length ({total} steps)")
        self.schedule = Cubic(self.final_sparsity, begin, end, freq, self.initial_sparsity)
        model = unwrap(state.model)
        if attached(model) is None:
            params = prunable_parameters(model, exclude=self.exclude)
            attach(model, {k: torch.ones_like(p, dtype=torch.bool) for k, p in params.items()})

    def on_step_end(self, state: TrainState, batch: Batch) -> None:
        assert self.schedule is not None
        if not self.schedule.is_update_step(state.step):
            return
        s = self.schedule.sparsity_at(state.step)
        cfg = Magnitude(s, pattern=self.pattern, scope=self.scope, allocation=self.allocation, exclude=self.exclude)
        report = self._prune(unwrap(state.model), cfg)
        assert report.masks is not None
        check_masks_synced(report.masks.masks, f"after the pruning step at step {state.step}")
        self.history.append((state.step, report.sparsity))
        log.debug("step %d: sparsity %.4f", state.step, report.sparsity)

    def _prune(self, model: nn.Module, cfg: Magnitude) -> Report:
        """Mask the lowest-scored survivors down to ``cfg.sparsity`` (what is pruned stays pruned)."""
        return prune_scored_(model, cfg, "magnitude")

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [tuple(h) for h in state.get("history", [])]  # type: ignore[misc]


@dataclass
class GradualMovement(GradualMagnitude):
    """Gradual movement pruning: Sanh, Wolf & Rush 2020 ("Movement Pruning"), hard top-k variant, on the cubic
    schedule of Zhu & Gupta that the paper also uses.

    Each weight's score is its accumulated movement S = -sum_t W^(t) * dL/dW^(t) (the paper's S after
    its eq. 6 with the learning rate of S dropped, which does not change a ranking), summed after every
    backward pass from the first step; at each update step of the schedule the surviving weights with
    the lowest S are masked. A weight moving away from zero (W and its update of the same sign) gains
    score; one shrinking toward zero loses it, however large it is now. Unlike the paper, whose scores
    keep receiving straight-through gradients, masked weights here are held at exactly zero, so their
    score stops changing and they do not come back (the same rule as ``GradualMagnitude``).

    Gradients arrive averaged over ranks under DDP (or are averaged here for an unwrapped model in a
    process group), so every rank accumulates the same scores and computes the same masks.
    """

    movement: dict[str, Tensor] = field(default_factory=dict, init=False, repr=False)
    _params: dict[str, nn.Parameter] = field(default_factory=dict, init=False, repr=False)

    def on_fit_start(self, state: TrainState) -> None:
        super().on_fit_start(state)
        self._params = prunable_parameters(unwrap(state.model), exclude=self.exclude)
        for k, p in self._params.items():
            if k not in self.movement:  # kept when resuming from a checkpoint
                self.movement[k] = torch.zeros_like(p, dtype=torch.float32)

    @torch.no_grad()
    def on_after_backward(self, state: TrainState, batch: Batch) -> None:
        grads = {k: p.grad.detach() for k, p in self._params.items() if p.grad is not None}
        if world_size() > 1 and not is_ddp(state.model):
            grads = {k: g.clone() for k, g in grads.items()}
            all_reduce_mean_(list(grads.values()))
        for k, g in grads.items():
            self.movement[k].addcmul_(self._params[k].detach(), g, value=-1.0)  # S -= W * dL/dW, no temporary

    def _prune(self, model: nn.Module, cfg: Magnitude) -> Report:
        # a layer without accumulated movement is reported by the shared path ("needs stats['movement']")
        return prune_scored_(model, cfg, "movement", stats={k: {"movement": v} for k, v in self.movement.items()})

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "movement": dict(self.movement)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.movement = {k: torch.as_tensor(v, dtype=torch.float32).clone()
                         for k, v in state.get("movement", {}).items()}
