"""Sparse training as callbacks on one plain PyTorch loop."""

from .checkpoint import Checkpoint, CheckpointEvery, load_checkpoint, save_checkpoint
from .distill import Distillation
from .distributed import MaskSyncError, check_masks_synced
from .dynamic import SET, GraNet, RigL
from .gradual import GradualMagnitude, GradualMovement
from .loop import Batch, Callback, FitResult, TrainState, evaluate, fit
from .lottery import (
    IMP,
    IMPResult,
    RewindPoint,
    iterative_magnitude,
    lottery_ticket,
    random_reinit_control,
    reinitialize_,
    run_imp,
)
from .methods import TRAINING_METHODS, training_callbacks
from .nm import SRSTE
from .pai import (
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

__all__ = [
    "Batch", "Callback", "FitResult", "GradualMagnitude", "GradualMovement", "TrainState", "evaluate", "fit",
    "SET", "SNIP", "SRSTE", "Checkpoint", "CheckpointEvery", "Distillation", "GraNet", "GraSP", "IMP", "IMPResult",
    "MaskSyncError", "PruneAtInit", "RewindPoint", "RigL", "SynFlow", "check_masks_synced", "grasp_masks",
    "iterative_magnitude", "load_checkpoint", "lottery_ticket", "magnitude_masks", "random_masks",
    "random_reinit_control", "reinitialize_", "save_checkpoint", "snip_masks", "synflow_masks", "TRAINING_METHODS",
    "training_callbacks", "run_imp",
]
