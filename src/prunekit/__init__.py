"""prunekit: pruning neural networks and their training data, on PyTorch.

score -> select -> apply -> recover -> measure, for weights and for training examples. The verbs are
in place: ``prune_(model, config, data=None)`` zeroes weights behind masks; ``remove_(model,
example_inputs, Structured(...))`` deletes channels, heads and blocks for real.
"""

from .accounting import count_macs, count_nonzeros, count_params, layer_table, totals
from .api import Magnitude, Random, Taylor, prune_, sparsity_report
from .calibrate import SparseGPT, Wanda
from .config import Config
from .masks import Report, attach, load_masks, masks_of, save_masks
from .patterns import NM, Block, Channel, Unstructured, topk_mask
from .structured import Structured, remove_
from .training import SNIP, GradualMagnitude, GraSP, SynFlow, fit

__version__ = "0.1.0"

__all__ = [
    "NM", "SNIP", "Block", "Channel", "Config", "GraSP", "GradualMagnitude", "Magnitude", "Random", "Report",
    "SparseGPT", "Structured", "SynFlow", "Taylor", "fit",
    "Unstructured", "Wanda", "attach", "count_macs", "count_nonzeros", "count_params", "layer_table",
    "load_masks", "masks_of", "prune_", "remove_", "save_masks", "sparsity_report", "topk_mask", "totals",
]
