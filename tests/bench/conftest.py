"""Fixtures of the bench tests: a tiny sweep (an MLP on scikit-learn digits) and a store of fake runs."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from prunekit.bench.store import ResultsStore, RunRecord


def tiny_sweep(**over: Any) -> dict[str, Any]:
    """A sweep small enough for a unit test: 1 seed, 2 sparsities, 3 methods, 1-2 epochs."""
    cfg: dict[str, Any] = {
        "experiment": "tiny",
        "model": {"name": "mlp", "in_features": 64, "hidden": [16]},
        "dataset": {"name": "digits", "flat": True},
        "dense": {"epochs": 2, "lr": 0.05},
        "methods": [
            {"type": "magnitude", "scope": "global", "finetune": {"epochs": 1}},
            {"type": "magnitude", "scope": "global"},
            {"type": "gradual_magnitude", "scope": "global", "epochs": 2},
        ],
        "sparsities": [0.5, 0.9],
        "seeds": [0],
        "threads": 1,
    }
    cfg.update(over)
    return cfg


@pytest.fixture
def sweep_config() -> dict[str, Any]:
    return tiny_sweep()


@pytest.fixture
def make_sweep() -> Any:
    """``make_sweep(**overrides)``: the tiny sweep config with some keys replaced."""
    return tiny_sweep


def fake_run(method: str, sparsity: float, seed: int, accuracy: float, experiment: str = "exp",
             per_layer: dict[str, float] | None = None) -> RunRecord:
    """A stored-run record with hand-set numbers."""
    cfg = {"model": "mlp", "method": method, "sparsity": sparsity, "seed": seed}
    return RunRecord(experiment, cfg, metrics={"accuracy": accuracy, "loss": 1.0 - accuracy},
                     per_layer=per_layer if per_layer is not None else {"fc1.weight": sparsity, "fc2.weight": sparsity},
                     timings={"total_s": 1.0})


@pytest.fixture
def make_run() -> Any:
    """``make_run(method, sparsity, seed, accuracy, ...)``: a record with hand-set numbers."""
    return fake_run


@pytest.fixture
def filled_db(tmp_path: Path) -> Path:
    """A database holding dense (90, 92) and magnitude at 0.5 (80, 84) and 0.9 (60, 70) over seeds 0 and 1."""
    path = tmp_path / "runs.sqlite"
    with ResultsStore(path) as store:
        for seed, (d, a, b) in enumerate([(0.90, 0.80, 0.60), (0.92, 0.84, 0.70)]):
            store.add(fake_run("dense", 0.0, seed, d, per_layer={}))
            store.add(fake_run("magnitude", 0.5, seed, a))
            store.add(fake_run("magnitude", 0.9, seed, b, per_layer={"fc1.weight": 0.95, "fc2.weight": 0.5}))
    return path


@pytest.fixture
def read_only() -> Any:
    """``read_only(path)`` clears every write bit of ``path``; they are restored after the test."""
    changed: list[tuple[Path, int]] = []

    def make(path: Path) -> Path:
        changed.append((path, stat.S_IMODE(path.stat().st_mode)))
        os.chmod(path, stat.S_IMODE(path.stat().st_mode) & ~0o222)
        return path

    yield make
    for path, mode in reversed(changed):
        os.chmod(path, mode)
