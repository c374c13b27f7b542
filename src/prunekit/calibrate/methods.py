"""The calibrated methods as registered ``prune_`` functions: ``fn(model, config, data) -> Report``."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..masks import Report
from ..registry import METHODS
from .config import CalibratedMagnitude, SparseGPT, Wanda
from .engine import prune_blocks


def _need_data(data: Any, what: str) -> Any:
    if data is None:
        raise ValueError(
            f"{what} needs calibration data: pass data=prunekit.calibrate.calibration_data(tokenizer) "
            "(or token ids shaped (N, L))"
        )
    return data


@METHODS.register("sparsegpt", kind="calibrated", config=SparseGPT, stats=("gram",))
def prune_sparsegpt(model: nn.Module, config: SparseGPT, data: Any = None) -> Report:
    """SparseGPT on every transformer block of ``model`` (Frantar & Alistarh 2023)."""
    return prune_blocks(model, "sparsegpt", config, _need_data(data, "SparseGPT"))


@METHODS.register("wanda", kind="calibrated", config=Wanda, stats=("input_norms",))
def prune_wanda(model: nn.Module, config: Wanda, data: Any = None) -> Report:
    """Wanda on every transformer block of ``model`` (Sun et al. 2024)."""
    return prune_blocks(model, "wanda", config, _need_data(data, "Wanda"))


@METHODS.register("calibrated-magnitude", kind="calibrated", config=CalibratedMagnitude,
                  aliases=("calibrated_magnitude", "magnitude"))
def prune_calibrated_magnitude(model: nn.Module, config: Any, data: Any = None) -> Report:
    """Magnitude through the calibration engine (``prunekit.Magnitude`` or ``CalibratedMagnitude``)."""
    return prune_blocks(model, "calibrated-magnitude", config, _need_data(data, "calibrated magnitude"))


__all__ = ["CalibratedMagnitude", "prune_calibrated_magnitude", "prune_sparsegpt", "prune_wanda"]
