"""Options of a recovery run after pruning (PERP, LoRA, distillation), checked before any work."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

METHODS = ("perp", "lora", "distill")
DISTILL_PARAMS = ("all", "perp", "lora")


@dataclasses.dataclass
class Recovery:
    """How to retrain a pruned model: ``method``, optimizer steps and what is trainable.

    ``perp``: biases and normalization weights only (PERP, Zimmer et al. 2023), plus one scale per output
    row of every pruned linear with ``linear_scale`` and one per input column with ``column_scale`` (both: PERP's
    rank-1 ScaleLoRA) and, with ``add_bias``, zero biases added first to a bias-free model's attention and MLP
    projections (``recover.params.add_biases``; LLaMA-family configs); ``scale_rank`` r: PERP's ScaleLoRA
    ``W * (B A)`` at rank r on every pruned linear instead (``recover.params.ScaleLoRA``). ``lora``:
    rank-``lora_rank`` adapters on the pruned linears, their product masked so the merged weights keep the
    sparsity pattern exactly. ``distill``: KL divergence to the dense model's next-token distribution at
    ``temperature``, training ``distill_params`` (``all`` kept weights under the mask, ``perp`` or ``lora``).
    """

    method: str = "perp"
    steps: int = 200
    lr: float | None = None  # default per method: perp 1e-3 (norms) / lora 1e-3 / all 1e-4
    batch_size: int = 8
    seq_len: int = 128
    lora_rank: int = 8
    lora_alpha: float = 16.0
    linear_scale: bool = False
    column_scale: bool = False
    add_bias: bool = False
    scale_rank: int | None = None
    distill_params: str = "all"
    temperature: float = 1.0
    weight_decay: float = 0.0
    max_minutes: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field and its accepted values."""
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.distill_params not in DISTILL_PARAMS:
            raise ValueError(f"distill_params must be one of {', '.join(DISTILL_PARAMS)}, got {self.distill_params!r}")
        for name, low in (("steps", 1), ("batch_size", 1), ("seq_len", 2), ("lora_rank", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        for name in ("lr", "lora_alpha", "temperature", "max_minutes"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                                  or v <= 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if self.scale_rank is not None:
            if isinstance(self.scale_rank, bool) or not isinstance(self.scale_rank, int) or self.scale_rank < 1:
                raise ValueError(f"scale_rank must be an integer >= 1, got {self.scale_rank!r}")
            if self.trains != "perp":
                raise ValueError(f"scale_rank applies to method perp (its parameter set), not to {self.trains!r}")
            if self.linear_scale or self.column_scale:
                raise ValueError("scale_rank (ScaleLoRA) already scales rows and columns; drop linear_scale / "
                                 "column_scale")
        if self.add_bias and self.trains != "perp":
            raise ValueError(f"add_bias applies to the perp parameter set, not to {self.trains!r}")
        if not isinstance(self.weight_decay, (int, float)) or self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")

    @property
    def scaled(self) -> bool:
        """Whether scales of the pruned linears train (``linear_scale`` / ``column_scale`` / ``scale_rank``)."""
        return self.linear_scale or self.column_scale or self.scale_rank is not None

    @property
    def trains(self) -> str:
        """Which parameter set is trained: ``perp``, ``lora`` or ``all``."""
        return self.distill_params if self.method == "distill" else self.method

    def learning_rate(self) -> float:
        """``lr`` or the default of the trained parameter set."""
        return self.lr if self.lr is not None else {"perp": 1e-3, "lora": 1e-3, "all": 1e-4}[self.trains]

    def to_dict(self) -> dict[str, Any]:
        """The options as a JSON-able dict (stored in the manifest and the results store)."""
        return dataclasses.asdict(self)
