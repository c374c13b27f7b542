"""Shared helpers of the data-pruning benchmarks: data sets, proxy runs, subset training, AUROC, results store."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunekit.training import evaluate, fit
from prunekit.zoo import get_dataset, get_model

# model, data set kwargs, training recipe for each benchmark data set (equal steps for every kept fraction)
SETUPS: dict[str, dict[str, Any]] = {
    "mnist1d": {"model": "cnn1d", "data": {"num_samples": 10_000}, "steps": 2000,
                "fit": {"batch_size": 128, "lr": 0.1, "optimizer": "sgd", "weight_decay": 5e-4}},
    "digits": {"model": "lenet5", "data": {}, "steps": 700,
               "fit": {"batch_size": 64, "lr": 0.05, "optimizer": "sgd", "weight_decay": 5e-4}},
}


def load(name: str) -> Any:
    """The benchmark's data split for ``name``."""
    return get_dataset(name, **SETUPS[name]["data"])


def proxy_epochs(name: str, n_train: int, steps: int | None = None) -> int:
    """Epochs of a full-data proxy run with the same number of steps as a subset run (``steps``: override)."""
    setup = SETUPS[name]
    steps_per_epoch = -(-n_train // setup["fit"]["batch_size"])
    return max(1, round((steps or setup["steps"]) / steps_per_epoch))


def train_eval(name: str, data: Any, seed: int, idx: torch.Tensor | None = None, sampler: Any = None,
               y_train: torch.Tensor | None = None, train: tuple[torch.Tensor, torch.Tensor] | None = None,
               test: tuple[torch.Tensor, torch.Tensor] | None = None, steps: int | None = None,
               callbacks: list[Any] | None = None, make_model: Any = None) -> tuple[float, float]:
    """Train a fresh model for the setup's fixed number of steps on ``idx`` (or with ``sampler``); accuracy, s.

    ``train`` / ``test`` replace the data set's splits (the validation mode of ``data_prune.py`` trains on
    80% of the training split and tests on the held-out 20%); by default the test split is used.
    ``steps`` overrides the setup's step count; ``callbacks`` go to ``fit`` (e.g. ``Distillation``);
    ``make_model(seed)`` replaces the setup's zoo model.
    """
    setup = SETUPS[name]
    x, y = train if train is not None else (data.x_train, data.y_train if y_train is None else y_train)
    pairs = (x, y) if idx is None else (x[idx], y[idx])
    model = get_model(setup["model"], seed=seed) if make_model is None else make_model(seed)
    t = time.perf_counter()
    fit(model, pairs, steps=steps or setup["steps"], sampler=sampler, seed=seed, callbacks=callbacks or [],
        **setup["fit"])
    dt = time.perf_counter() - t
    return evaluate(model, data.test if test is None else test)["accuracy"], dt


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for the boolean ``positive`` labels (rank formula, ties averaged)."""
    from scipy.stats import rankdata

    r = rankdata(score)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((r[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def symmetric_noise(y: torch.Tensor, rate: float, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels with a ``rate`` fraction flipped to a uniformly chosen *other* class; returns (labels, flipped mask)."""
    g = torch.Generator().manual_seed(seed)
    flip = torch.zeros(len(y), dtype=torch.bool)
    flip[torch.randperm(len(y), generator=g)[: round(rate * len(y))]] = True
    shift = torch.randint(1, num_classes, (len(y),), generator=g)
    noisy = torch.where(flip, (y + shift) % num_classes, y)
    return noisy, flip


def machine() -> dict[str, Any]:
    """Cores, CPU model and load average, for the results file."""
    try:
        model = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in model.splitlines() if ln.startswith("Model name")), "?")
    except OSError:
        model = "?"
    return {"nproc": os.cpu_count(), "cpu": model, "loadavg": os.getloadavg(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (``ru_maxrss``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def store(db: str | None) -> Any:
    """The results store at ``db`` (or None when ``db`` is empty)."""
    if not db:
        return None
    from prunekit.bench.store import ResultsStore

    Path(db).parent.mkdir(parents=True, exist_ok=True)
    return ResultsStore(db)
