"""The in-place verbs: ``prune_(model, config, data=None) -> Report`` and ``sparsity_report(model)``.

A method is a config dataclass plus a function registered in ``METHODS`` under the config's type;
``prune_`` dispatches on it. The one-shot engine lives in :mod:`prunekit.oneshot`; ``Magnitude``,
``Random`` and ``Taylor`` are re-exported here for compatibility.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from . import oneshot
from .config import Config
from .layers import classify
from .masks import DEFAULT_EXCLUDE, LayerReport, Report, attached, layer_sparsity
from .oneshot import Criterion, Magnitude, Random, Taylor
from .registry import METHODS

__all__ = ["Criterion", "Magnitude", "Random", "Taylor", "prune_", "sparsity_report"]


def prune_(model: nn.Module, config: Config, data: Any = None) -> Report:
    """Prune ``model`` in place with ``config``; ``data`` feeds methods that need it (Taylor, calibration)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, Config):
        raise TypeError(f"config must be a prunekit method config (e.g. prunekit.Magnitude(0.5)), got {config!r}")
    entry = METHODS.get(config.type_name)
    if entry.kind not in ("oneshot", "calibrated"):
        raise ValueError(f"{entry.name!r} is a {entry.kind} method, not one prune_ applies; "
                         f"accepted: {', '.join(METHODS.names('oneshot') + METHODS.names('calibrated'))}")
    if isinstance(config, Magnitude) and data is not None and _is_calibration(model, data):
        entry = METHODS.get("calibrated-magnitude")  # magnitude on a transformer with calibration text
    return entry.obj(model, config, data)


def _is_calibration(model: nn.Module, data: Any) -> bool:
    """True when ``model`` is a transformers model and ``data`` is calibration text/tokens."""
    return hasattr(model, "config") and hasattr(model.config, "model_type") and not isinstance(data, tuple)


def sparsity_report(model: nn.Module, exclude: list[str] | tuple[str, ...] = DEFAULT_EXCLUDE) -> Report:
    """Per-layer sparsity (exact zeros) of the prunable weights of ``model``, the total, and the labelled ledger.

    ``exclude`` defaults to the one ``prune_`` uses, so both report the same "pruned weights" figure.
    Read-only: a tensor no rule covers is reported as kept (``uncovered``) with a warning, not an error.
    """
    ledger = classify(model, exclude=exclude, strict=False)
    params = ledger.parameters(model)
    layers = [LayerReport(k, list(p.shape), p.numel(), layer_sparsity(p.detach())) for k, p in params.items()]
    ledger.measure(model)
    return Report({"type": "report"}, layers, 0.0, attached(model), ledger=ledger)


def __getattr__(name: str) -> Any:
    """Names of the one-shot engine that lived here before ``prunekit.oneshot`` (deprecated spellings)."""
    if not name.startswith("__") and hasattr(oneshot, name):
        warnings.warn(f"prunekit.api.{name} moved to prunekit.oneshot.{name}", DeprecationWarning, stacklevel=2)
        return getattr(oneshot, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
