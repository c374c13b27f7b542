"""The ``prunekit`` command (typer): one module per command group, the shared flags in ``common``.

Thin: parses flags into configs and calls the library; nothing here imports torch until a command runs.
"""

from __future__ import annotations

import logging

from . import bench, data, delta, federated, llm, model, prune, recover, robust, tokens, zoo
from .common import app_group

app = app_group("Prune neural networks and their training data, on PyTorch.")
for _group in (model, prune, llm, recover, delta, data, bench, zoo, robust, tokens, federated):
    _group.register(app)


def _mount() -> None:
    """Kept for callers of the old ``prunekit.cli._mount``: every group is attached at import now."""


def main() -> None:
    """Entry point of the ``prunekit`` console script."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


__all__ = ["app", "main"]
