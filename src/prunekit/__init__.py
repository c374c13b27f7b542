"""prunekit: pruning neural networks and their training data, on PyTorch.

score -> select -> apply -> recover -> measure, for weights and for training examples.
"""

from .api import Magnitude, Random, Taylor, prune_, sparsity_report
from .config import Config
from .masks import Report, attach, load_masks, masks_of, save_masks
from .patterns import NM, Block, Channel, Unstructured, topk_mask

__version__ = "0.1.0"

__all__ = [
    "NM", "Block", "Channel", "Config", "Magnitude", "Random", "Report", "Taylor", "Unstructured",
    "attach", "load_masks", "masks_of", "prune_", "save_masks", "sparsity_report", "topk_mask",
]
