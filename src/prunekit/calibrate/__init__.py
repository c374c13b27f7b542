"""Post-training pruning of transformers: one layer-by-layer calibration engine for every solver."""

from .config import CalibratedMagnitude, DSnoTConfig, OWLConfig, SparseGPT, Wanda
from .data import Calibration, as_calibration, calibration_data, load_texts
from .engine import CalibrationPlan, clear_state, prune_blocks
from .methods import prune_calibrated_magnitude, prune_sparsegpt, prune_wanda
from .pipeline import prune_model_dir
from .solvers import CholeskyError, dsnot, magnitude, reconstruction_error, sparsegpt, wanda
from .stats import LayerStats, stats_from_inputs

__all__ = [
    "CalibrationPlan",
    "SOLVERS",
    "Calibration",
    "CalibratedMagnitude",
    "CholeskyError",
    "DSnoTConfig",
    "LayerStats",
    "OWLConfig",
    "SparseGPT",
    "Wanda",
    "as_calibration",
    "calibration_data",
    "clear_state",
    "dsnot",
    "load_texts",
    "magnitude",
    "prune_blocks",
    "prune_calibrated_magnitude",
    "prune_model_dir",
    "prune_sparsegpt",
    "prune_wanda",
    "reconstruction_error",
    "sparsegpt",
    "stats_from_inputs",
    "wanda",
]


def __getattr__(name: str) -> object:
    if name == "SOLVERS":  # the calibrated methods' names, from the registry
        from ..registry import METHODS

        return tuple(METHODS.names("calibrated"))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
