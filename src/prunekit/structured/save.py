"""Save a slim model as a folder (kind ``structured``): ``plan.json`` + ``model.safetensors``
(+ ``config.json`` for transformers) + ``manifest.json``, and load it with every shape checked first.

The folder is written with ``prunekit.io.atomic_dir`` (replaced only with ``overwrite``). Loading
checks the plan against the weights' header, and the rebuilt model's shapes (on the meta device
where it builds there) against it too, before any weight is allocated or read.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io import (
    Header,
    atomic_dir,
    atomic_write_text,
    check_tensor_file,
    load_tensors,
    read_manifest,
    save_tensors,
    write_manifest,
)
from . import hf
from .plan import PLAN_FILE, WEIGHTS_FILE, Plan, apply_plan_

log = logging.getLogger(__name__)
KIND = "structured"
MAX_DENSE_RATIO = 1000  # a dense source this many times the slim file is refused before it is allocated


def _untied(model: nn.Module, plan: Plan) -> dict[str, torch.Tensor]:
    """The state dict with each tied tensor once (its other names recorded in ``plan.aliases``)."""
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
    return tensors


def save_structured(model: nn.Module, plan: Plan, directory: str | os.PathLike,
                    source: dict[str, Any] | None = None, *, overwrite: bool = False) -> Path:
    """Write the slim model's weights, its plan, ``config.json`` (if plain transformers loads it) and the manifest.

    ``source`` says how to build the dense model again, e.g. ``{"zoo": "resnet56", "kwargs": {}}``;
    transformers models record it themselves. The folder appears whole or not at all.
    """
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be a prunekit.structured.Plan, got {type(plan).__name__}")
    with atomic_dir(directory, overwrite=overwrite) as tmp:
        save_tensors(tmp / WEIGHTS_FILE, _untied(model, plan), metadata={"format": "pt", "prunekit": "structured"})
        if hf.is_hf(model) and plan.hf_loadable:
            atomic_write_text(tmp / "config.json", model.config.to_json_string())
        if source is not None:
            plan.source = source
        plan.save(tmp / PLAN_FILE)
        write_manifest(tmp, KIND, {"plan": PLAN_FILE, "weights": WEIGHTS_FILE, "summary": plan.summary})
    return Path(directory)


def save_pruned(*args: Any, **kwargs: Any) -> Path:
    """Deprecated alias of :func:`save_structured`."""
    return save_structured(*args, **kwargs)


def _canonical(plan: Plan) -> dict[str, str]:
    """Every tensor name -> the name it is saved under."""
    return {a: name for name, aliases in plan.aliases.items() for a in aliases}


def check_plan(plan: Plan, head: Header, file: Path) -> None:
    """Refuse a plan whose shapes, added tensors or kept positions disagree with the weights' header."""
    canon = _canonical(plan)

    def saved(name: str) -> tuple[int, ...] | None:
        got = head.get(canon.get(name, name))
        return None if got is None else got[0]

    for name, shape in {**plan.shapes, **plan.added}.items():
        got = saved(name)
        if got is None and name in plan.added:
            raise ValueError(f"{file}: the plan adds tensor {name!r} of shape {shape}, which the file lacks")
        if got is not None and tuple(shape) != got:
            raise ValueError(f"{file}: the plan gives tensor {name!r} shape {list(shape)}, the file holds "
                             f"{list(got)}")
    for name, dims in plan.tensors.items():
        got = saved(name)
        for d, pos in dims.items():
            if got is not None and (int(d) >= len(got) or len(pos) != got[int(d)]):
                raise ValueError(f"{file}: the plan keeps {len(pos)} positions of dimension {d} of {name!r}, "
                                 f"the file holds shape {list(got)}")


def _expected(model: nn.Module, plan: Plan) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Shapes and dtypes the weights file must hold for ``model`` (tied names under their saved name)."""
    canon = _canonical(plan)
    exp = {}
    for k, v in model.state_dict(keep_vars=True).items():
        exp.setdefault(canon.get(k, k), (tuple(v.shape), v.dtype))
    return exp


def _meta_check(plan: Plan, file: Path) -> None:
    """Build the source on the meta device (no allocation), replay the plan and compare with the header."""
    try:
        with torch.device("meta"):
            net = build_source(plan.source)
            dense_shapes = list(net.state_dict().values())
            apply_plan_(net, Plan.from_dict(plan.to_dict()))
    except (ValueError, TypeError):
        raise
    except Exception as e:  # noqa: BLE001 - a builder the meta device cannot run: checked after the real build
        log.info("meta-device check of %s skipped (%s); shapes are checked after the real build", file, e)
        return
    head = check_tensor_file(file, {k: (s, None) for k, (s, _) in _expected(net, plan).items()},
                             require_all=False, what="slim model weights")
    dense = sum(math.prod(v.shape) for v in dense_shapes)
    slim = sum(math.prod(shape) for shape, _ in head.values())
    if dense > MAX_DENSE_RATIO * slim + (1 << 20):
        raise ValueError(f"{file}: the plan's source would build a dense model of {dense} elements for a slim model "
                         f"of {slim} (more than {MAX_DENSE_RATIO}x); refusing it: check the plan's \"source\" or "
                         "pass model=<a fresh dense model>")


def _read_plan(d: Path) -> Plan:
    man = read_manifest(d, kinds=(KIND,), what="slim model")
    name = man.get("plan", PLAN_FILE)
    if not isinstance(name, str) or Path(name).name != name:
        raise ValueError(f"{d / 'manifest.json'}: \"plan\" must be a file name in the folder, got {name!r:.100}")
    return Plan.load(d / name)


def load_structured(directory: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a slim model saved by :func:`save_structured`.

    Give ``model`` (a fresh dense instance of the original architecture), or let the plan's
    ``source`` build it (zoo models and transformers models). Widths that differ per layer load
    here even where ``config.json`` cannot describe them.
    """
    d = Path(directory)
    plan = _read_plan(d)
    file = d / WEIGHTS_FILE
    check_plan(plan, check_tensor_file(file, None, what="slim model weights"), file)
    if model is None:
        _meta_check(plan, file)
        model = build_source(plan.source)
    apply_plan_(model, plan)
    head = check_tensor_file(file, {k: (s, None) for k, (s, _) in _expected(model, plan).items()},
                             require_all=False, what="slim model weights")
    tensors, _ = load_tensors(file, "slim model weights")
    state = model.state_dict(keep_vars=True)
    for name, aliases in plan.aliases.items():
        for a in aliases:
            if a not in tensors and name in tensors:
                tensors[a] = tensors[name]
    missing = sorted(k for k in set(state) - set(tensors) if _canonical(plan).get(k, k) not in head)
    if missing:
        raise ValueError(f"{file} lacks tensors {missing[:5]} of the rebuilt model")
    model.load_state_dict({k: v for k, v in tensors.items() if k in state}, strict=False)
    return model


def load_pruned(directory: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Alias of :func:`load_structured`."""
    return load_structured(directory, model)


def build_source(source: dict[str, Any] | None) -> nn.Module:
    """The dense model a plan's ``source`` describes (zoo name + kwargs, or transformers class + config)."""
    if not source:
        raise ValueError("the plan has no source to rebuild the model from; pass model=<a fresh dense model>")
    if "zoo" in source:
        from ..zoo import get_model

        return get_model(source["zoo"], **source.get("kwargs", {}))
    if "hf" in source:
        return hf.build_from_source(source)
    raise ValueError(f"unknown model source {str(source)[:200]}; pass model=<a fresh dense model>")
