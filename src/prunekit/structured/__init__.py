"""Structured pruning that removes channels, heads, MLP neurons and blocks for real.

``build_graph`` traces a model once and groups every pair of coupled dimensions; ``remove_`` scores
the groups, allocates widths to a MACs or parameter budget, shrinks the modules in place and returns
a JSON :class:`Plan` that rebuilds the slim model from safetensors (``save_structured`` / ``load_structured``).
``slice_`` (SliceGPT) rotates a decoder LLM's residual stream onto its principal directions and slices it.
"""

from .api import Structured, remove_, remove_units_, select_units
from .export import export_onnx
from .graph import Graph, Group, Member, build_graph
from .importance import GROUP_SCORES, group_scores
from .ops import register_op
from .plan import Plan, apply_plan_
from .regularize import BNSlimming, PruningAwareRegularizer
from .save import load_pruned, load_structured, save_pruned, save_structured
from .slice import SliceReport, fold_norms_, load_sliced, save_sliced, slice_, slicegpt
from .trace import TraceError

__all__ = [
    "BNSlimming",
    "GROUP_SCORES",
    "Graph",
    "Group",
    "Member",
    "Plan",
    "SliceReport",
    "PruningAwareRegularizer",
    "Structured",
    "TraceError",
    "apply_plan_",
    "build_graph",
    "export_onnx",
    "fold_norms_",
    "group_scores",
    "load_pruned",
    "load_sliced",
    "load_structured",
    "register_op",
    "remove_",
    "remove_units_",
    "save_pruned",
    "save_sliced",
    "save_structured",
    "select_units",
    "slice_",
    "slicegpt",
]
