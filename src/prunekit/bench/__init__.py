"""Experiments: sweeps (``run_sweep``), the SQLite results store, reports, the demo, latency timing."""

from .demo import run_demo
from .report import write_report
from .runner import run_sweep, validate_config
from .store import ResultsStore, ResultsStoreError, RunRecord

__all__ = ["ResultsStore", "ResultsStoreError", "RunRecord", "run_demo", "run_sweep", "validate_config",
           "write_report"]
