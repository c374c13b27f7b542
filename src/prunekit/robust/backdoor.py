"""The backdoor benchmark: poison a zoo data set, train a zoo model on it, defend, measure."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from .defenses import DEFENSES, DefenseConfig, defend_
from .metrics import backdoor_metrics
from .poison import ATTACKS, Trigger, check_poison_args, make_trigger, poison

log = logging.getLogger(__name__)

DATASET_MODELS = {"mnist1d": "cnn1d", "digits": "lenet5"}  # the default model of each built-in data set
# Blended-trigger opacity per data set: Chen et al.'s 0.2 makes a backdoor of MNIST-1D (ASR >= 97%), but an 8x8
# digits image needs 0.4 (with the recipe's 30 epochs) to reach ASR >= 90% on every development seed
# (100-103; 0.3 gave 86.7% on seed 103): docs/results/robustness.md.
BLEND_ALPHA = {"mnist1d": 0.2, "digits": 0.4}


@dataclass
class BackdoorConfig:
    """One backdoor run: data set, model, attack, poison rate, target label, defense, defender's clean fraction,
    training budget of the backdoored model (``epochs``, default the zoo recipe's) and the defense settings."""

    dataset: str = "mnist1d"
    model: str | None = None
    attack: str = "badnets"
    poison: float = 0.05
    target: int = 0
    defense: str = "fmp"
    clean_fraction: float = 0.05
    seed: int = 0
    epochs: int | None = None
    trigger_size: int | None = None
    alpha: float | None = None
    width: int | None = None
    defense_config: DefenseConfig = field(default_factory=DefenseConfig)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the defense settings nested)."""
        return asdict(self)


def check_clean_fraction(fraction: object, y: Tensor, num_classes: int) -> int:
    """The clean set's size for ``fraction`` of the training set; it must hold one example of every class."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"--clean-fraction must be a fraction in (0, 1], got {fraction!r}")
    n = round(float(fraction) * len(y))
    present = len(torch.unique(y))
    if n < num_classes or present < num_classes:
        raise ValueError(f"--clean-fraction {fraction} gives {n} clean examples of {len(y)}: too few to hold one "
                         f"example of each of the {num_classes} classes; use at least "
                         f"{num_classes / len(y):.4f}")
    return n


def clean_subset(y: Tensor, n: int, num_classes: int, seed: int) -> Tensor:
    """``n`` sorted training indices, stratified by class (every class at least once)."""
    gen = torch.Generator().manual_seed(seed + 7919)
    per_class = [torch.nonzero(y == c).flatten() for c in range(num_classes)]
    quota = [max(1, round(n * len(idx) / len(y))) for idx in per_class]
    while sum(quota) > n:  # rounding up every class may overshoot: trim the largest quotas
        quota[max(range(num_classes), key=lambda c: quota[c])] -= 1
    picks = [idx[torch.randperm(len(idx), generator=gen)[:q]] for idx, q in zip(per_class, quota)]
    return torch.sort(torch.cat(picks)).values


def check_config(cfg: BackdoorConfig) -> None:
    """Every check that needs no training (names the flag and the accepted values)."""
    from ..zoo.datasets import DATASETS

    if cfg.dataset not in DATASET_MODELS:
        raise ValueError(f"--dataset must be one of {', '.join(DATASET_MODELS)} for the backdoor benchmark, "
                         f"got {cfg.dataset!r}")
    DATASETS.get(cfg.dataset)
    if cfg.attack not in ATTACKS:
        raise ValueError(f"--attack must be one of {', '.join(ATTACKS)}, got {cfg.attack!r}")
    if cfg.defense not in DEFENSES:
        raise ValueError(f"--defense must be one of {', '.join(DEFENSES.names())}, got {cfg.defense!r}")
    check_poison_args(cfg.poison, cfg.target, 10)
    if cfg.epochs is not None and (isinstance(cfg.epochs, bool) or not isinstance(cfg.epochs, int)
                                   or cfg.epochs < 1):
        raise ValueError(f"--epochs must be a positive integer, got {cfg.epochs!r}")


WIDTH_ARGS = {"cnn1d": "channels"}  # the zoo argument that sets a model's feature-map count


def model_kwargs(name: str, width: int | None) -> dict[str, Any]:
    """Zoo keyword arguments for ``width`` feature maps per convolution (``{}`` for the default width)."""
    if width is None:
        return {}
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"--width must be a positive integer (feature maps per convolution), got {width!r}")
    if name not in WIDTH_ARGS:
        raise ValueError(f"--width is only defined for the models {', '.join(WIDTH_ARGS)}, not {name!r}")
    return {WIDTH_ARGS[name]: width}


def load(dataset: str, model: str | None, seed: int, width: int | None = None) -> tuple[Any, torch.nn.Module, str]:
    """The data split, a freshly initialised model (seeded; ``width`` maps per convolution) and the model's name."""
    from ..zoo.datasets import get_dataset
    from ..zoo.models import get_model, input_shape

    name = model or DATASET_MODELS[dataset]
    kwargs = model_kwargs(name, width)
    data = get_dataset(dataset)
    expects, gives = tuple(input_shape(name, **kwargs)), tuple(data.x_train.shape[1:])
    if expects != gives:
        raise ValueError(f"--model {name} takes inputs of shape {expects} but --dataset {dataset} gives {gives}; "
                         f"use --model {DATASET_MODELS[dataset]} (or a model built for that shape)")
    return data, get_model(name, seed=seed, **kwargs), name


def train(model: torch.nn.Module, data: tuple[Tensor, Tensor], model_name: str, epochs: int | None,
          seed: int) -> float:
    """Train with the zoo recipe of ``model_name`` (``epochs`` overrides its epochs); returns seconds."""
    from ..training.loop import fit
    from ..zoo.models import RECIPES

    recipe = dict(RECIPES.get(model_name, RECIPES["cnn1d"]))
    if epochs is not None:
        recipe["epochs"] = epochs
    t = time.perf_counter()
    fit(model, data, seed=seed, **recipe)
    return time.perf_counter() - t


@dataclass
class Backdoored:
    """A trained backdoored model with its data, trigger, the defender's clean set and the poisoning record."""

    data: Any
    model: torch.nn.Module
    model_name: str
    trigger: Trigger
    clean: tuple[Tensor, Tensor]
    poisoned: int
    train_s: float


def backdoored(cfg: BackdoorConfig) -> Backdoored:
    """Check ``cfg`` (before any training), poison the training set, train the model on it."""
    check_config(cfg)
    data, model, model_name = load(cfg.dataset, cfg.model, cfg.seed, cfg.width)
    check_poison_args(cfg.poison, cfg.target, data.num_classes)
    n_clean = check_clean_fraction(cfg.clean_fraction, data.y_train, data.num_classes)
    trigger = trigger_for(cfg, data.x_train)
    bad = poison(data.x_train, data.y_train, trigger, cfg.poison, cfg.target, data.num_classes, seed=cfg.seed)
    train_s = train(model, (bad.x, bad.y), model_name, cfg.epochs, cfg.seed)
    idx = clean_subset(data.y_train, n_clean, data.num_classes, cfg.seed)
    return Backdoored(data, model, model_name, trigger, (data.x_train[idx], data.y_train[idx]), len(bad.poisoned),
                      train_s)


def defend_and_measure(bd: Backdoored, defense: str, cfg: BackdoorConfig) -> dict[str, Any]:
    """Defend a copy of the backdoored model; the metrics before and after (accuracies as fractions)."""
    d = bd.data
    model = copy.deepcopy(bd.model)
    before = backdoor_metrics(model, d.x_test, d.y_test, bd.trigger, cfg.target)
    rep = defend_(model, defense, bd.clean, cfg.defense_config, cfg.seed)
    after = backdoor_metrics(model, d.x_test, d.y_test, bd.trigger, cfg.target)
    log.info("backdoor %s/%s %s: before %s, after %s", cfg.dataset, bd.model_name, defense, before, after)
    return {"clean_acc_before": before["clean_acc"], "clean_acc_after": after["clean_acc"],
            "asr_before": before["asr"], "asr_after": after["asr"], "ra_before": before["ra"],
            "ra_after": after["ra"], "model": bd.model_name, "clean_examples": len(bd.clean[1]),
            "poisoned_examples": bd.poisoned, "trigger": bd.trigger.describe(), "train_s": bd.train_s,
            "defense_s": rep.pop("seconds"), "defense_report": rep}


def run_backdoor(cfg: BackdoorConfig) -> dict[str, Any]:
    """Poison, train, measure, defend, measure again: the metrics of ``metrics.json``."""
    return defend_and_measure(backdoored(cfg), cfg.defense, cfg)


def trigger_for(cfg: BackdoorConfig, x: Tensor) -> Trigger:
    """The attack's trigger for inputs like ``x``, in their value range (patch values, blend pattern)."""
    shape = tuple(x.shape[1:])
    lo, hi = float(x.min()), float(x.max())
    if cfg.attack == "blended":
        alpha = BLEND_ALPHA.get(cfg.dataset, 0.2) if cfg.alpha is None else cfg.alpha
        return make_trigger("blended", shape, alpha=alpha, low=lo, high=hi, seed=cfg.seed)
    return make_trigger("badnets", shape, size=cfg.trigger_size, low=lo, high=hi)
