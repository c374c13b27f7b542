"""``TokenPrune``: which method prunes tokens, how many stay and after which layers."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..registry import METHODS


@dataclasses.dataclass
class TokenPrune:
    """Token pruning settings; ``keep`` is the fraction of a sequence's real tokens left after the last pruning layer.

    ``keep`` is reached geometrically over ``layers`` (each keeps ``keep ** (1 / len(layers))`` of its
    tokens; default: the first layer only). ``schedule`` instead gives every layer its own kept fraction
    (1.0: that layer prunes nothing) and then ``keep`` and ``layers`` are not used. Tokens are pruned
    inside a layer, after attention and before the MLP (as ToMe places its merging). ``special_ids``:
    token ids never removed besides the first and the last real token ([CLS], [SEP]).
    """

    method: str = "zero-tprune"
    keep: float = 0.66
    layers: tuple[int, ...] | None = None
    schedule: tuple[float, ...] | None = None
    seed: int = 0
    iters: int = 5  # Weighted PageRank steps (Zero-TPrune)
    special_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("layers", "schedule", "special_ids"):
            v = getattr(self, name)
            if isinstance(v, list):
                setattr(self, name, tuple(v))
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field and its accepted values."""
        names = METHODS.spellings("token")
        if self.method not in names:
            raise ValueError(f"method must be one of {', '.join(names)}, got {self.method!r}")
        _fraction(self.keep, "keep")
        if self.layers is not None and (not self.layers or any(_bad_int(i, 0) for i in self.layers)):
            raise ValueError(f"layers must be a non-empty tuple of layer indices >= 0, got {self.layers!r}")
        if self.schedule is not None:
            if not self.schedule:
                raise ValueError("schedule must hold one kept fraction in (0, 1] per layer, got ()")
            for i, k in enumerate(self.schedule):
                _fraction(k, f"schedule[{i}]")
        if _bad_int(self.iters, 1):
            raise ValueError(f"iters must be an integer >= 1, got {self.iters!r}")
        if _bad_int(self.seed, 0) or any(_bad_int(i, 0) for i in self.special_ids):
            raise ValueError(f"seed and special_ids must be integers >= 0, got {self.seed!r}, {self.special_ids!r}")

    def per_layer(self, depth: int) -> list[float]:
        """The kept fraction of every one of ``depth`` layers (1.0 where nothing is pruned)."""
        if self.schedule is not None:
            if len(self.schedule) != depth:
                raise ValueError(f"schedule has {len(self.schedule)} entries but the model has {depth} layers")
            return [float(k) for k in self.schedule]
        layers = self.layers if self.layers is not None else (0,)
        bad = [i for i in layers if i >= depth]
        if bad:
            raise ValueError(f"layers {bad} do not exist: the model has layers 0..{depth - 1}")
        step = float(self.keep) ** (1.0 / len(set(layers)))
        return [step if i in layers else 1.0 for i in range(depth)]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON fields (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> TokenPrune:
        """Rebuild from ``to_dict``; unknown fields are an error naming them."""
        names = {f.name for f in dataclasses.fields(TokenPrune)}
        extra = set(d) - names
        if extra:
            raise ValueError(f"unknown TokenPrune fields {sorted(extra)}; accepted: {sorted(names)}")
        return TokenPrune(**d)


def _fraction(v: Any, name: str) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or not 0 < v <= 1:
        raise ValueError(f"{name} must be a kept fraction in (0, 1], got {v!r}")


def _bad_int(v: Any, low: int) -> bool:
    return isinstance(v, bool) or not isinstance(v, int) or v < low
