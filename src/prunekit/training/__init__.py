"""Sparse training as callbacks on one plain PyTorch loop."""

from .gradual import GradualMagnitude
from .loop import Batch, Callback, FitResult, TrainState, evaluate, fit

__all__ = ["Batch", "Callback", "FitResult", "GradualMagnitude", "TrainState", "evaluate", "fit"]
