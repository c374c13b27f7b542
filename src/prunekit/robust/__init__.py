"""Pruning for robustness: backdoor attacks and defenses (FMP, fine-pruning), unlearning through sparsity."""

from .anp import ANPConfig, anp_masks
from .backdoor import BackdoorConfig, run_backdoor
from .defenses import DEFENSES, DefenseConfig, defend_
from .fmp import FMPConfig, fmp_scores, maps_to_prune
from .metrics import attack_success_rate, backdoor_metrics, clean_accuracy, robust_accuracy
from .poison import ATTACKS, Trigger, make_trigger, poison
from .unlearn import UNLEARNERS, UnlearnConfig, mia_efficacy, parse_forget, run_unlearn

__all__ = [
    "ANPConfig", "ATTACKS", "BackdoorConfig", "DEFENSES", "DefenseConfig", "FMPConfig", "Trigger", "UNLEARNERS",
    "UnlearnConfig", "anp_masks", "attack_success_rate", "backdoor_metrics", "clean_accuracy", "defend_",
    "fmp_scores", "make_trigger", "maps_to_prune", "mia_efficacy", "parse_forget", "poison", "robust_accuracy",
    "run_backdoor", "run_unlearn",
]
