"""Shared pieces of the sparse-training benchmarks (MNIST-1D, the zoo's 1-D CNN): data, recipe, an audit
callback that checks exact sparsity after every optimizer step, and table formatting."""

from __future__ import annotations

import platform
import statistics
import subprocess
import time
from typing import Any

import torch

from prunekit.masks import attached
from prunekit.training import SRSTE, Callback, evaluate, fit
from prunekit.training.distributed import unwrap
from prunekit.training.methods import training_callbacks
from prunekit.zoo import RECIPES, get_dataset, get_model


def machine() -> str:
    """CPU count, CPU model, torch version (for the results file)."""
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return f"nproc={nproc}; {' '.join(cpu.split())}; torch {torch.__version__}; python {platform.python_version()}"


def mean_std(xs: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± std`` (sample std over seeds), scaled (accuracy in %)."""
    m = statistics.mean(xs) * scale
    s = statistics.stdev(xs) * scale if len(xs) > 1 else 0.0
    return f"{m:.{digits}f} ± {s:.{digits}f}"


class Audit(Callback):
    """After every optimizer step: pruned weights exactly zero, kept counts per layer (DST: constant)."""

    def __init__(self) -> None:
        self.start: dict[str, int] | None = None
        self.max_count_change = 0  # largest |kept(t) - kept(start)| of any layer, over all steps
        self.nonzero_pruned = 0  # pruned weights found non-zero after a step (must stay 0)
        self.nm_violations = 0  # SR-STE groups with more than n non-zeros
        self.steps = 0
        self.srste: SRSTE | None = None

    def on_step_end(self, state, batch) -> None:
        self.steps += 1
        if self.srste is not None:
            cb = self.srste
            for p in cb._params.values():
                nz = (p.detach() != 0).movedim(1, -1) if p.dim() > 2 else (p.detach() != 0)
                self.nm_violations += int((nz.reshape(-1, cb.m).sum(-1) > cb.n).sum())
            return
        ms = attached(unwrap(state.model))
        if ms is None:
            return
        counts = {k: int(m.sum()) for k, m in ms.masks.items()}
        if self.start is None:
            self.start = counts
        self.max_count_change = max(self.max_count_change, *(abs(counts[k] - self.start[k]) for k in counts))
        for k, p in ms.params.items():
            self.nonzero_pruned += int((p.detach()[~ms.masks[k]] != 0).sum())


def data():
    """The standard MNIST-1D split (4000 train / 1000 test, seed 42), generated in memory."""
    return get_dataset("mnist1d")


def recipe(**overrides: Any) -> dict[str, Any]:
    """The zoo's cnn1d recipe (60 epochs, SGD 0.1 momentum 0.9, cosine, wd 5e-4, batch 128) with overrides."""
    return {**RECIPES["cnn1d"], **overrides}


def train(method: str, sparsity: float | None, seed: int, *, width: int, split: Any, teacher: Any = None,
          epochs: int | None = None, **options: Any) -> dict[str, Any]:
    """Train cnn1d(channels=width) from seed ``seed`` with ``method``; test accuracy, sparsity, audit, time."""
    model = get_model("cnn1d", seed=seed, channels=width)
    cbs = training_callbacks(method, sparsity, data=split.train, teacher=teacher, seed=seed, **options)
    audit = Audit()
    audit.srste = next((c for c in cbs if isinstance(c, SRSTE)), None)
    rec = recipe(**({"epochs": epochs} if epochs else {}))
    t0 = time.perf_counter()
    diverged_at = None
    try:
        fit(model, split.train, callbacks=[*cbs, audit], seed=seed, **rec)
    except FloatingPointError:  # non-finite loss: fit stopped before applying it; evaluate what it holds
        diverged_at = audit.steps + 1
    seconds = time.perf_counter() - t0
    ms = attached(model)
    kept = sum(int(m.sum()) for m in ms.masks.values()) if ms else None
    total = sum(m.numel() for m in ms.masks.values()) if ms else None
    return {"method": method, "seed": seed, "accuracy": evaluate(model, split.test)["accuracy"], "seconds": seconds,
            "sparsity": (1 - kept / total) if ms else 0.0, "kept": kept, "total": total, "steps": audit.steps,
            "max_count_change": audit.max_count_change, "nonzero_pruned": audit.nonzero_pruned,
            "nm_violations": audit.nm_violations, "diverged_at": diverged_at, "model": model}
