"""When to prune: ``sparsity_at(step) -> float`` and ``is_update_step(step) -> bool``."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import check_fraction, check_sparsity


def _check_int(value: int, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class OneShot:
    """All of ``sparsity`` at ``step`` (default 0), none before."""

    sparsity: float
    step: int = 0

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)
        _check_int(self.step, "step")

    def sparsity_at(self, step: int) -> float:
        return self.sparsity if step >= self.step else 0.0

    def is_update_step(self, step: int) -> bool:
        return step == self.step


@dataclass(frozen=True)
class Cubic:
    """Gradual pruning of Zhu & Gupta 2017, eq. 1: s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3.

    Updates every ``frequency`` steps from ``begin_step`` to ``end_step`` (= t0 + n dt) inclusive;
    the sparsity holds at ``final_sparsity`` after ``end_step``.
    """

    final_sparsity: float
    begin_step: int
    end_step: int
    frequency: int = 100
    initial_sparsity: float = 0.0

    def __post_init__(self) -> None:
        check_sparsity(self.final_sparsity, "final_sparsity")
        check_sparsity(self.initial_sparsity, "initial_sparsity")
        _check_int(self.begin_step, "begin_step")
        _check_int(self.frequency, "frequency", 1)
        if not isinstance(self.end_step, int) or self.end_step <= self.begin_step:
            raise ValueError(f"end_step must be an integer > begin_step={self.begin_step}, got {self.end_step!r}")

    def sparsity_at(self, step: int) -> float:
        if step < self.begin_step:
            return 0.0
        t = min(1.0, (step - self.begin_step) / (self.end_step - self.begin_step))
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1.0 - t) ** 3

    def is_update_step(self, step: int) -> bool:
        if step < self.begin_step or step > self.end_step:
            return False
        return (step - self.begin_step) % self.frequency == 0 or step == self.end_step


@dataclass(frozen=True)
class Iterative:
    """Iterative magnitude pruning: each round removes ``fraction`` of the remaining weights (Han et al. 2015;
    Frankle & Carbin 2019). Steps here are rounds: sparsity after round r is 1 - (1 - fraction)^r."""

    fraction: float
    rounds: int

    def __post_init__(self) -> None:
        check_fraction(self.fraction, "fraction", high_closed=False)
        _check_int(self.rounds, "rounds", 1)

    def sparsity_at(self, step: int) -> float:
        r = min(max(step, 0), self.rounds)
        return 1.0 - (1.0 - self.fraction) ** r

    def is_update_step(self, step: int) -> bool:
        return 1 <= step <= self.rounds

    @staticmethod
    def rounds_for(target: float, fraction: float) -> int:
        """Rounds needed to reach ``target`` sparsity removing ``fraction`` per round."""
        check_sparsity(target, "target")
        check_fraction(fraction, "fraction", high_closed=False)
        return max(1, math.ceil(math.log(1.0 - target) / math.log(1.0 - fraction) - 1e-9))


@dataclass(frozen=True)
class CosineDecay:
    """Drop/grow fraction of dynamic sparse training: alpha/2 (1 + cos(pi t / T_end)) every ``delta`` steps
    before ``end_step`` (Evci et al. 2020, RigL, eq. 1)."""

    alpha: float = 0.3
    delta: int = 100
    end_step: int = 1000
    begin_step: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha < 1:
            raise ValueError(f"alpha (update fraction) must be in (0, 1), got {self.alpha!r}")
        _check_int(self.delta, "delta", 1)
        _check_int(self.end_step, "end_step", 1)
        _check_int(self.begin_step, "begin_step")

    def fraction_at(self, step: int) -> float:
        if step >= self.end_step:
            return 0.0
        return self.alpha / 2 * (1 + math.cos(math.pi * step / self.end_step))

    def is_update_step(self, step: int) -> bool:
        return self.begin_step < step < self.end_step and step % self.delta == 0
