"""Federated pruning on Flower's simulation engine: Dirichlet client splits, FedAvg, FedAvg-then-prune,
FedTiny-style progressive pruning, binary supermasks and HideNseek sign supermasks, with byte accounting.

Flower (extra ``federated``) is imported only by ``simulate``: ``run_federated(FedConfig(...))``.
"""

from __future__ import annotations

from typing import Any

from .config import DATASETS, FedConfig
from .data import ClientSplit, client_splits, dirichlet_split
from .methods import METHODS

__all__ = ["DATASETS", "METHODS", "ClientSplit", "FedConfig", "client_splits", "dirichlet_split", "run_federated"]


def run_federated(cfg: FedConfig, **kwargs: Any) -> Any:
    """Run one simulation (see ``prunekit.federated.simulate.run_federated``)."""
    from .simulate import run_federated as run

    return run(cfg, **kwargs)
