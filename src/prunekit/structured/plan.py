"""The removal plan: JSON that replays a removal on a fresh model or rebuilds the slim one from safetensors.

A plan holds, in order of application: blocks kept per container (depth), kept positions of every
shrunk tensor dimension (width), tensors added (bias compensation), width attributes of modules, and
the updated Hugging Face config. No pickled object is ever written or read.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..io import atomic_write_text, read_json
from .remove import Undo, named_state, owner, replace_tensor

PLAN_FILE = "plan.json"
LAST_PLAN = "_prunekit_plan"  # attribute on a slim model: the plan that made it (chained on the next removal)
WEIGHTS_FILE = "model.safetensors"


@dataclass
class Plan:
    """What ``remove_`` did to a model, as JSON-able data (``to_dict`` / ``from_dict``)."""

    config: dict[str, Any] = field(default_factory=dict)
    blocks: dict[str, list[int]] = field(default_factory=dict)  # container -> kept block indices
    tensors: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # name -> {dim: kept positions}
    aliases: dict[str, list[str]] = field(default_factory=dict)  # name -> every name of that tensor
    shapes: dict[str, list[int]] = field(default_factory=dict)  # name -> new shape
    added: dict[str, list[int]] = field(default_factory=dict)  # new parameter -> shape (bias compensation)
    attributes: dict[str, dict[str, Any]] = field(default_factory=dict)  # module -> {attr: value}
    hf_config: dict[str, Any] | None = None  # updated transformers config (to_diff_dict of the model's)
    hf_loadable: bool | None = None  # True if plain transformers rebuilds the slim model from hf_config
    source: dict[str, Any] | None = None  # how to build the dense model: {"zoo": name, ...} or {"hf": ...}
    summary: dict[str, Any] = field(default_factory=dict)  # MACs, params, latency before/after, time
    previous: list[dict[str, Any]] = field(default_factory=list)  # earlier removals, oldest first
    version: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict with ``type`` and ``version``."""
        return {"type": "prunekit.structured.plan", "version": self.version, **asdict(self)}

    def to_json(self) -> str:
        """The plan as one JSON string."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        """Rebuild a plan; a wrong type or version is a clear error."""
        if not isinstance(d, dict) or d.get("type") != "prunekit.structured.plan":
            raise ValueError("not a prunekit structured plan (expected a JSON object with "
                             "type 'prunekit.structured.plan')")
        if d.get("version") != cls.version:
            raise ValueError(f"plan version {d.get('version')!r} is not supported; this prunekit reads version "
                             f"{cls.version}")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def save(self, path: str | os.PathLike) -> Path:
        """Write the plan as JSON, atomically."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        """Read a plan written by :meth:`save`; every error names the file."""
        p = Path(path)
        d = read_json(p, "plan file")
        try:
            check_plan_fields(d)
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"plan file {p}: {e}") from None


_DICT_FIELDS = ("config", "blocks", "tensors", "aliases", "shapes", "added", "attributes", "summary")


def check_plan_fields(d: dict[str, Any]) -> None:
    """Raise naming the first field of a plan dict that has the wrong JSON type (object, list, ints)."""
    for name in _DICT_FIELDS:
        if not isinstance(d.get(name, {}), dict):
            raise ValueError(f"{name!r} must be a JSON object, got {type(d[name]).__name__}")
    for name in ("hf_config", "source"):
        if d.get(name) is not None and not isinstance(d[name], dict):
            raise ValueError(f"{name!r} must be a JSON object or null, got {type(d[name]).__name__}")
    if not isinstance(d.get("previous", []), list):
        raise ValueError(f"'previous' must be a JSON list, got {type(d['previous']).__name__}")
    for i, earlier in enumerate(d.get("previous", [])):
        if not isinstance(earlier, dict):
            raise ValueError(f"previous[{i}] must be a JSON object, got {type(earlier).__name__}")
        check_plan_fields(earlier)
    for name in ("shapes", "added"):
        for k, shape in d.get(name, {}).items():
            if not _ints(shape):
                raise ValueError(f"{name}[{k!r}] must be a list of non-negative integers, got {shape!r:.100}")
    for k, dims in d.get("tensors", {}).items():
        if not isinstance(dims, dict) or not all(_ints(pos) for pos in dims.values()):
            raise ValueError(f"tensors[{k!r}] must map dimensions to lists of kept positions, got {dims!r:.100}")


def _ints(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in v)


def chain(model: nn.Module, plan: Plan) -> Plan:
    """Make ``plan`` carry the removals that made ``model`` before it (so it rebuilds from the dense one)."""
    last = model.__dict__.get(LAST_PLAN)
    if isinstance(last, Plan) and last is not plan:
        d = last.to_dict()
        plan.previous = [*d.pop("previous"), d]
        plan.source = last.source or plan.source  # the dense original, not the slim config
    return plan


def keep_blocks_(model: nn.Module, blocks: dict[str, list[int]], undo: Undo) -> None:
    """Keep only the listed children of each ``nn.ModuleList`` / ``nn.Sequential`` container.

    Container names are those of the model *before* any block goes (stable names): every name and kept
    index is resolved to its module object first, and only then are the containers rebuilt in place, so
    removing a block of ``blocks`` cannot shift which inner container ``blocks.3`` means.
    """
    resolved = []
    for path in blocks:
        kept = list(blocks[path])
        container = model.get_submodule(path) if path else model
        if not isinstance(container, (nn.ModuleList, nn.Sequential)):
            raise ValueError(f"plan removes blocks of {path!r}, which is a {type(container).__name__}, "
                             f"not an nn.ModuleList or nn.Sequential")
        children = list(container._modules.values())
        if any(not isinstance(i, int) or not 0 <= i < len(children) for i in kept) or len(set(kept)) != len(kept):
            raise ValueError(f"plan keeps blocks {kept} of {path!r}, which has {len(children)}")
        resolved.append((container, [children[i] for i in sorted(kept)]))
    for container, kept_modules in resolved:  # names are no longer needed: edit the objects
        new = type(container._modules)((str(j), c) for j, c in enumerate(kept_modules))
        undo.set(container.__dict__, "_modules", new)


def apply_plan_(model: nn.Module, plan: Plan, undo: Undo | None = None) -> nn.Module:
    """Replay ``plan`` on a dense model: same blocks, kept positions, attributes and config as the
    original removal (on a fresh pretrained copy it reproduces the slim weights too)."""
    undo = undo or Undo()
    try:
        for earlier in plan.previous:
            apply_plan_(model, Plan.from_dict({**earlier, "type": "prunekit.structured.plan",
                                               "version": Plan.version}), undo)
        keep_blocks_(model, plan.blocks, undo)
        state = named_state(model)
        for name, dims in plan.tensors.items():
            if name not in state:
                raise ValueError(f"plan shrinks tensor {name!r}, which this model does not have")
            x = state[name].detach()
            for d, pos in dims.items():
                x = x.index_select(int(d), torch.as_tensor(pos, dtype=torch.long, device=x.device))
            replace_tensor(model, plan.aliases.get(name, [name]), x.clone(), undo)
        for name, shape in plan.added.items():
            m, a = owner(model, name)
            undo.set(m._parameters, a, nn.Parameter(torch.zeros(shape)))
        for path, attrs in plan.attributes.items():
            m = model.get_submodule(path) if path else model
            for k, v in attrs.items():
                undo.set_attr(m, k, tuple(v) if isinstance(getattr(m, k, None), tuple) else v)
        if plan.hf_config is not None and hasattr(model, "config"):
            from .hf import set_config_
            set_config_(model, plan.hf_config, undo)
        undo.set(model.__dict__, LAST_PLAN, plan)
    except Exception:
        undo.rollback()
        raise
    return model
