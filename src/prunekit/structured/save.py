"""Save a slim model as ``plan.json`` + ``model.safetensors`` (+ ``config.json`` for transformers) and load it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..io import atomic_write_text, load_tensors, save_tensors
from . import hf
from .plan import PLAN_FILE, WEIGHTS_FILE, Plan, apply_plan_


def save_pruned(model: nn.Module, plan: Plan, directory: str | os.PathLike,
                source: dict[str, Any] | None = None) -> Path:
    """Write the slim model's weights, its plan and (if plain transformers can load it) ``config.json``.

    ``source`` says how to build the dense model again, e.g. ``{"zoo": "resnet56", "kwargs": {}}``;
    transformers models record it themselves. Each file is written atomically; the plan goes last.
    """
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be a prunekit.structured.Plan, got {type(plan).__name__}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    first: dict[tuple, str] = {}
    tensors = {}
    for k, v in model.state_dict(keep_vars=False).items():
        key = (v.data_ptr(), v.dtype, tuple(v.shape), v.stride())
        if v.numel() and key in first:  # a tied tensor: saved once, reloaded under every name
            plan.aliases.setdefault(first[key], [first[key]])
            if k not in plan.aliases[first[key]]:
                plan.aliases[first[key]].append(k)
            continue
        first[key] = k
        tensors[k] = v
    save_tensors(d / WEIGHTS_FILE, tensors, metadata={"format": "pt", "prunekit": "structured"})
    if hf.is_hf(model) and plan.hf_loadable:
        atomic_write_text(d / "config.json", model.config.to_json_string())
    if source is not None:
        plan.source = source
    plan.save(d / PLAN_FILE)
    return d


def load_pruned(directory: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a slim model saved by :func:`save_pruned`.

    Give ``model`` (a fresh dense instance of the original architecture), or let the plan's
    ``source`` build it (zoo models and transformers models). Widths that differ per layer load
    here even where ``config.json`` cannot describe them.
    """
    d = Path(directory)
    plan = Plan.load(d / PLAN_FILE)
    if model is None:
        model = build_source(plan.source)
    apply_plan_(model, plan)
    tensors, _ = load_tensors(d / WEIGHTS_FILE, "slim model weights")
    state = model.state_dict(keep_vars=True)
    for name, aliases in plan.aliases.items():
        for a in aliases:
            if a not in tensors and name in tensors:
                tensors[a] = tensors[name]
    missing = sorted(set(state) - set(tensors))
    # tied weights saved once under another name are fine; any other gap is an error
    missing = [k for k in missing if not any(k in al for al in plan.aliases.values())]
    if missing:
        raise ValueError(f"{d / WEIGHTS_FILE} lacks tensors {missing[:5]} of the rebuilt model")
    model.load_state_dict({k: v for k, v in tensors.items() if k in state}, strict=False)
    return model


def build_source(source: dict[str, Any] | None) -> nn.Module:
    """The dense model a plan's ``source`` describes (zoo name + kwargs, or transformers class + config)."""
    if not source:
        raise ValueError("the plan has no source to rebuild the model from; pass model=<a fresh dense model>")
    if "zoo" in source:
        from ..zoo import get_model

        return get_model(source["zoo"], **source.get("kwargs", {}))
    if "hf" in source:
        return hf.build_from_source(source)
    raise ValueError(f"unknown model source {json.dumps(source)[:200]}; pass model=<a fresh dense model>")
