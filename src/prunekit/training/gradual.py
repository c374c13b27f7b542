"""Gradual magnitude pruning as a training callback (Zhu & Gupta 2017, "To prune, or not to prune")."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from ..api import Magnitude, prune_scored_
from ..masks import DEFAULT_EXCLUDE, attach, attached, prunable_parameters
from ..patterns import NM, Pattern, Unstructured, parse_pattern
from ..schedules import Cubic
from .loop import Batch, Callback, TrainState

log = logging.getLogger(__name__)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper (masks live on it, with its parameter names)."""
    return getattr(model, "module", model)


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
        model = _unwrap(state.model)
        if attached(model) is None:
            params = prunable_parameters(model, exclude=self.exclude)
            attach(model, {k: torch.ones_like(p, dtype=torch.bool) for k, p in params.items()})

    def on_step_end(self, state: TrainState, batch: Batch) -> None:
        assert self.schedule is not None
        if not self.schedule.is_update_step(state.step):
            return
        s = self.schedule.sparsity_at(state.step)
        cfg = Magnitude(s, pattern=self.pattern, scope=self.scope, allocation=self.allocation, exclude=self.exclude)
        report = prune_scored_(_unwrap(state.model), cfg, "magnitude")
        self.history.append((state.step, report.sparsity))
        log.debug("step %d: sparsity %.4f", state.step, report.sparsity)

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [tuple(h) for h in state.get("history", [])]  # type: ignore[misc]
