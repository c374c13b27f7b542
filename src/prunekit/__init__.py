"""prunekit: pruning neural networks and their training data, on PyTorch.

score -> select -> apply -> recover -> measure, for weights and for training examples. The verbs are
in place: ``prune_(model, config, data=None)`` zeroes weights behind masks; ``remove_(model,
example_inputs, Structured(...))`` deletes channels, heads and blocks for real.

Public names load lazily (PEP 562): ``import prunekit`` (and the ``prunekit`` command's ``--help``)
does not import torch until one of them is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_HOME = {  # public name -> the module that defines it
    **dict.fromkeys(["count_macs", "count_nonzeros", "count_params", "layer_table", "totals"], ".accounting"),
    **dict.fromkeys(["Magnitude", "Random", "Taylor", "prune_", "sparsity_report"], ".api"),
    **dict.fromkeys(["SparseGPT", "Wanda"], ".calibrate"),
    "Config": ".config",
    **dict.fromkeys(["Report", "attach", "load_masks", "masks_of", "save_masks"], ".masks"),
    **dict.fromkeys(["NM", "Block", "Channel", "Unstructured", "topk_mask"], ".patterns"),
    **dict.fromkeys(["Structured", "remove_"], ".structured"),
    **dict.fromkeys(["SNIP", "GradualMagnitude", "GraSP", "SynFlow", "fit"], ".training"),
}

__all__ = [
    "NM", "SNIP", "Block", "Channel", "Config", "GraSP", "GradualMagnitude", "Magnitude", "Random", "Report",
    "SparseGPT", "Structured", "SynFlow", "Taylor", "fit",
    "Unstructured", "Wanda", "attach", "count_macs", "count_nonzeros", "count_params", "layer_table",
    "load_masks", "masks_of", "prune_", "remove_", "save_masks", "sparsity_report", "topk_mask", "totals",
]


def __getattr__(name: str) -> Any:
    """On first use of a public name, import every public module (as an eager ``import prunekit`` did, so
    every method config is registered) and bind all public names."""
    if name not in _HOME:
        raise AttributeError(f"module 'prunekit' has no attribute {name!r}")
    modules = {m: importlib.import_module(m, __name__) for m in dict.fromkeys(_HOME.values())}
    globals().update({n: getattr(modules[m], n) for n, m in _HOME.items()})
    return globals()[name]


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
