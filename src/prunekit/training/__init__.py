"""Sparse training as callbacks on one plain PyTorch loop."""

from .gradual import GradualMagnitude
from .loop import Batch, Callback, FitResult, TrainState, evaluate, fit

__all__ = ["Batch", "Callback", "FitResult", "GradualMagnitude", "TrainState", "evaluate", "fit"]

# sparse training methods (issue 4)
from .checkpoint import Checkpoint, CheckpointEvery, load_checkpoint, save_checkpoint  # noqa: E402
from .distill import Distillation  # noqa: E402
from .distributed import MaskSyncError, check_masks_synced  # noqa: E402
from .dynamic import SET, GraNet, RigL  # noqa: E402
from .lottery import (  # noqa: E402
    IMPResult,
    RewindPoint,
    iterative_magnitude,
    lottery_ticket,
    random_reinit_control,
    reinitialize_,
)
from .methods import TRAINING_METHODS, training_callbacks  # noqa: E402
from .nm import SRSTE  # noqa: E402
from .pai import (  # noqa: E402
    SNIP,
    GraSP,
    PruneAtInit,
    SynFlow,
    grasp_masks,
    magnitude_masks,
    random_masks,
    snip_masks,
    synflow_masks,
)

__all__ += [
    "SET", "SNIP", "SRSTE", "Checkpoint", "CheckpointEvery", "Distillation", "GraNet", "GraSP", "IMPResult",
    "MaskSyncError", "PruneAtInit", "RewindPoint", "RigL", "SynFlow", "check_masks_synced", "grasp_masks",
    "iterative_magnitude", "load_checkpoint", "lottery_ticket", "magnitude_masks", "random_masks",
    "random_reinit_control", "reinitialize_", "save_checkpoint", "snip_masks", "synflow_masks", "TRAINING_METHODS",
    "training_callbacks",
]
