"""Proxy training runs that record training dynamics, one folder per seed, reused when already complete."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..training.loop import as_dataset, fit
from .checks import check_positive_int
from .dynamics import Dynamics, DynamicsRecorder

log = logging.getLogger(__name__)


def record_runs(make_model: Callable[[int], nn.Module], data: Any, root: str | os.PathLike,
                seeds: Sequence[int] = (0, 1, 2), epochs: int = 10, **fit_kwargs: Any) -> list[Dynamics]:
    """Train ``make_model(seed)`` on ``data`` for ``epochs`` per seed with a ``DynamicsRecorder``; return the runs.

    A seed whose folder already holds ``epochs`` recorded epochs is not trained again; a partial one
    is recorded again from its first epoch.
    """
    e = check_positive_int(epochs, "epochs")
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    n = len(as_dataset(data))
    runs = []
    for seed in seeds:
        rec = DynamicsRecorder(Path(root) / f"seed{seed}", n)
        if rec.epochs_done < e:
            if rec.epochs_done:
                log.info("seed %d: %d of %d epochs recorded; recording again", seed, rec.epochs_done, e)
                rec.load_state_dict({"epochs_done": 0})
            fit(make_model(seed), data, epochs=e, callbacks=[rec], seed=seed, **fit_kwargs)
        runs.append(Dynamics(rec.path))
    return runs
