"""``make demo``: the 1-D CNN on MNIST-1D, dense, one-shot and gradual magnitude pruning, stored and reported.

Trains the dense ``cnn1d`` (recipe ``prunekit.zoo.RECIPES["cnn1d"]``), prunes it one-shot with global
magnitude (Han et al. 2015) with and without fine-tuning, trains gradual magnitude pruning from
scratch (Zhu & Gupta 2017, eq. 1) with the dense run's epochs, at 50/80/90/95% sparsity; stores
every run in the results store and writes the report.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .report import check_out_dir, format_summary, summarize, write_report
from .runner import PlannedRun, SweepResult, run_sweep
from .store import DEFAULT_DB, ResultsStore, RunRecord, check_db_writable

log = logging.getLogger(__name__)

SPARSITIES = [0.5, 0.8, 0.9, 0.95]
FINETUNE = {"epochs": 20, "lr": 0.05}  # one-shot recovery: a third of the dense epochs, half its lr
QUICK_EPOCHS = {"dense": 5, "finetune": 2}


def demo_config(seeds: Sequence[int] = (0,), quick: bool = False) -> dict[str, Any]:
    """The demo's sweep config; ``quick`` shrinks every training run to a few epochs (a smoke test)."""
    finetune = dict(FINETUNE, epochs=QUICK_EPOCHS["finetune"]) if quick else dict(FINETUNE)
    gradual: dict[str, Any] = {"type": "gradual_magnitude", "scope": "global", "name": "gradual-magnitude"}
    cfg: dict[str, Any] = {
        "experiment": "demo-quick" if quick else "demo",
        "description": "cnn1d (64 channels) on MNIST-1D: one-shot global magnitude (with / without "
                       "fine-tuning) and gradual magnitude pruning",
        # 64 channels: the 25-channel paper net keeps only ~510 weights at 90% (docs/RESULTS.md)
        "model": {"name": "cnn1d", "channels": 64},
        "dataset": {"name": "mnist1d"},
        "methods": [
            {"type": "magnitude", "scope": "global", "finetune": finetune, "name": "one-shot-magnitude+finetune"},
            {"type": "magnitude", "scope": "global", "finetune": None, "name": "one-shot-magnitude"},
            gradual,
        ],
        "sparsities": list(SPARSITIES),
        "seeds": list(seeds),
        "threads": 1,  # a 5k-parameter CNN trains fastest on one thread, and leaves the other core free
    }
    if quick:
        cfg["dense"] = {"epochs": QUICK_EPOCHS["dense"]}
        gradual["epochs"] = QUICK_EPOCHS["dense"]
    return cfg


@dataclass
class DemoResult:
    """Where the demo wrote things, and its summary table (Markdown)."""

    out_dir: Path
    db: Path
    paths: dict[str, Path]
    summary: str
    sweep: SweepResult
    seconds: float
    cells: list[Any] = field(default_factory=list)


def parse_seeds(seeds: int | str | Sequence[int]) -> list[int]:
    """Seeds from a count (``3`` -> [0, 1, 2]), a comma list (``"0,1,2"``) or a sequence."""
    if isinstance(seeds, bool):
        raise ValueError(f"seeds must be a count, a comma list or a list of integers, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds as a count must be >= 1, got {seeds}")
        return list(range(seeds))
    if isinstance(seeds, str):
        parts = [p.strip() for p in seeds.split(",") if p.strip()]
        if not parts or not all(p.isdigit() for p in parts):
            raise ValueError(f"seeds must be a count ('3') or a comma list of integers ('0,1,2'), got {seeds!r}")
        return parse_seeds(int(parts[0])) if len(parts) == 1 else [int(p) for p in parts]
    out = list(seeds)
    if not out or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in out):
        raise ValueError(f"seeds must be non-negative integers, got {seeds!r}")
    return out


def run_demo(
    out_dir: str | os.PathLike[str] = "demo-out",
    db: str | os.PathLike[str] | None = None,
    seeds: int | str | Sequence[int] = (0,),
    quick: bool = False,
    progress: bool = False,
    on_run: Callable[[PlannedRun, RunRecord | None], None] | None = None,
) -> DemoResult:
    """Run the demo sweep into ``db`` (default ``<out_dir>/prunekit-results.sqlite``) and report to ``out_dir``."""
    t0 = time.perf_counter()
    config = demo_config(parse_seeds(seeds), quick)
    out = check_out_dir(out_dir)
    if db is not None:
        check_db_writable(db)  # before anything is created
    out.mkdir(parents=True, exist_ok=True)
    db_path = Path(db) if db is not None else out / DEFAULT_DB
    sweep = run_sweep(config, db_path, progress=progress, on_run=on_run)
    paths = write_report(db_path, out, experiment=config["experiment"])
    with ResultsStore(db_path, readonly=True) as store:
        cells = summarize(store.runs(config["experiment"]))
    seconds = time.perf_counter() - t0
    log.info("demo finished in %.1f s; report at %s", seconds, paths["html"])
    return DemoResult(out, db_path, paths, format_summary(cells), sweep, seconds, cells)
