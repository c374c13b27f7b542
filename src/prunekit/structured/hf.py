"""Hugging Face transformers: keep ``model.config`` true to the slim model so plain transformers loads it.

Heads, MLP neurons and blocks change per layer; where every layer keeps the same widths the config keys
(``num_attention_heads``, ``num_key_value_heads``, ``intermediate_size``, ``num_hidden_layers``, with
``head_dim`` pinned) are rewritten and the result is checked by building the architecture from the new
config on the meta device and comparing every tensor shape. Where widths differ per layer (or the
family derives the head size from ``hidden_size / num_attention_heads``, as BERT, GPT-2, OPT and ViT
do), the config cannot say it: :func:`prunekit.structured.load_pruned` rebuilds the model from the plan.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

from .graph import Graph
from .remove import Undo

log = logging.getLogger(__name__)

HEAD_KEYS = ("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads")
KV_KEYS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")
MLP_KEYS = ("intermediate_size", "n_inner", "ffn_dim", "encoder_ffn_dim")
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def is_hf(model: nn.Module) -> bool:
    """True for a transformers ``PreTrainedModel`` (checked without importing transformers)."""
    cfg = getattr(model, "config", None)
    return cfg is not None and any(c.__name__ == "PreTrainedConfig" or c.__name__ == "PretrainedConfig"
                                   for c in type(cfg).__mro__)


def _first(cfg: Any, keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if getattr(cfg, k, None) is not None or k in vars(cfg)), None)


def layer_container(model: nn.Module) -> str | None:
    """Path of the ``nn.ModuleList`` holding the transformer blocks (its length is the layer count)."""
    cfg = model.config
    key = _first(cfg, LAYER_KEYS)
    n = getattr(cfg, key) if key else None
    for path, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) == n and n:
            return path
    return None


def example_inputs(model: nn.Module, batch: int = 2, seq: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs a transformers model accepts: ``pixel_values`` for vision models, else ``input_ids``."""
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    if getattr(model, "main_input_name", "input_ids") == "pixel_values":
        size = getattr(cfg, "image_size", 224)
        return {"pixel_values": torch.randn(batch, getattr(cfg, "num_channels", 3), size, size, generator=gen)}
    vocab = getattr(cfg, "vocab_size", 1000)
    return {"input_ids": torch.randint(0, vocab, (batch, seq), generator=gen)}


def per_layer_widths(model: nn.Module, graph: Graph, counts: dict[int, int]) -> list[dict[str, int]]:
    """Heads, kv heads and MLP width of every block after removal (from the graph)."""
    cont = layer_container(model)
    if cont is None:
        return []
    n = len(model.get_submodule(cont))
    out: list[dict[str, int]] = [{} for _ in range(n)]
    for path, q, k in graph.tr.heads:
        i = _layer_of(path, cont)
        if i is not None and i < n:
            out[i]["heads"] = graph.A.new_size(q, counts)
            out[i]["kv_heads"] = graph.A.new_size(k, counts)
    for g in graph.groups(include_inexact=False):
        layers = {_layer_of(m.name, cont) for m in g.members}
        if g.kind == "channel" and len(layers) == 1 and None not in layers:
            i = layers.pop()
            if i < n:
                out[i]["mlp"] = out[i].get("mlp", 0) + counts.get(g.id, g.size)
    return out


def _layer_of(name: str, cont: str) -> int | None:
    pre = cont + "."
    if not name.startswith(pre):
        return None
    head = name[len(pre):].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def updated_config(model: nn.Module, widths: list[dict[str, int]], old_head_dim: int | None) -> dict[str, Any]:
    """Config keys to rewrite so the config describes uniform widths (empty where nothing changed)."""
    cfg, new = model.config, {}
    key = _first(cfg, LAYER_KEYS)
    if key and widths and getattr(cfg, key) != len(widths):
        new[key] = len(widths)
    for what, keys in (("heads", HEAD_KEYS), ("kv_heads", KV_KEYS), ("mlp", MLP_KEYS)):
        vals = {w[what] for w in widths if what in w}
        k = _first(cfg, keys)
        if len(vals) == 1 and k is not None:
            v = vals.pop()
            if getattr(cfg, k) != v:
                new[k] = v
    if any(k in new for k in HEAD_KEYS) and old_head_dim:
        new["head_dim"] = old_head_dim
    return new


def head_dim(model: nn.Module) -> int | None:
    """Head size of a transformers model (``config.head_dim`` or hidden size / heads)."""
    cfg = model.config
    if getattr(cfg, "head_dim", None):
        return int(cfg.head_dim)
    h, k = getattr(cfg, "hidden_size", None), _first(cfg, HEAD_KEYS)
    return int(h // getattr(cfg, k)) if h and k else None


def own_config_(model: nn.Module, undo: Undo) -> None:
    """Give the model its own copy of its config (shared by every module that held the original), so a
    config object the caller passed to other models is never changed."""
    old = model.config
    if model.__dict__.get("_prunekit_owns_config", False):
        return
    new = copy.deepcopy(old)
    undo.set(model.__dict__, "_prunekit_owns_config", True)
    for m in model.modules():
        if m.__dict__.get("config") is old:
            undo.set_attr(m, "config", new)


def set_config_(model: nn.Module, values: dict[str, Any], undo: Undo) -> None:
    """Write ``values`` into ``model.config`` (a private copy, journaled)."""
    own_config_(model, undo)
    for k, v in values.items():
        undo.set_attr(model.config, k, v)


def drop_layers_in_config_(model: nn.Module, kept: list[int], undo: Undo) -> dict[str, Any]:
    """After removing blocks: per-layer config lists and block ``layer_idx`` attributes follow."""
    cfg, new = model.config, {}
    key = _first(cfg, LAYER_KEYS)
    if key:
        new[key] = len(kept)
    if isinstance(getattr(cfg, "layer_types", None), list):
        new["layer_types"] = [cfg.layer_types[i] for i in kept]
    set_config_(model, new, undo)
    return new


def renumber_layers_(model: nn.Module, cont: str, undo: Undo) -> dict[str, dict[str, int]]:
    """Set every ``layer_idx`` attribute inside block ``i`` of ``cont`` to ``i``."""
    changed: dict[str, dict[str, int]] = {}
    for i, block in enumerate(model.get_submodule(cont)):
        for path, m in block.named_modules():
            if isinstance(getattr(m, "layer_idx", None), int) and m.layer_idx != i:
                undo.set_attr(m, "layer_idx", i)
                changed[f"{cont}.{i}" + (f".{path}" if path else "")] = {"layer_idx": i}
    return changed


def loadable(model: nn.Module) -> bool:
    """True if ``type(model)(model.config)`` has exactly the slim model's tensor shapes."""
    try:
        with torch.device("meta"):
            fresh = type(model)(type(model.config).from_dict(model.config.to_dict()))
    except Exception as e:  # noqa: BLE001 - any failure means "not loadable by plain transformers"
        log.info("plain transformers cannot build the slim config: %s", e)
        return False
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    return want == got


def source_of(model: nn.Module) -> dict[str, Any]:
    """How to rebuild the dense model: class name and config dict."""
    return {"hf": type(model).__name__, "config": model.config.to_dict()}


def build_from_source(source: dict[str, Any]) -> nn.Module:
    """A dense, randomly initialized transformers model from :func:`source_of`'s record."""
    import transformers

    cfg_d = dict(source["config"])
    cfg = transformers.AutoConfig.for_model(cfg_d.pop("model_type"), **cfg_d)
    cls = getattr(transformers, source["hf"], None)
    if cls is None:
        raise ValueError(f"transformers has no model class {source['hf']!r}")
    return cls(cfg)
