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


def task_loss(model: nn.Module, inputs: Any) -> tuple[torch.Tensor, str]:
    """The loss gradient-based importances differentiate, and its name: next-token cross-entropy for a
    causal LM given ``input_ids`` (the LM loss of LLM-Pruner, Ma et al. 2023, Eq. 2), else the mean squared
    output (the label-free proxy the Taylor path uses without data)."""
    from torch.nn import functional as F

    from .trace import call_model, output_tensors

    out = call_model(model, inputs)
    logits = getattr(out, "logits", None)
    ids = inputs.get("input_ids") if isinstance(inputs, dict) else None
    if logits is not None and ids is not None and logits.dim() == 3 and logits.shape[:2] == ids.shape:
        z = logits[:, :-1].float()  # (B, L-1, V)
        return F.cross_entropy(z.reshape(-1, z.shape[-1]), ids[:, 1:].reshape(-1)), "lm-cross-entropy"
    outs = [o.float().pow(2).mean() for o in output_tensors(out) if o.is_floating_point()]
    if not outs:
        raise ValueError(f"{type(model).__name__} returned no floating-point output to differentiate")
    return sum(outs), "mean-squared-output"


def grads_of(model: nn.Module, inputs: Any, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients of :func:`task_loss` for ``params`` only (model in eval mode; ``.grad`` fields untouched)."""
    was = model.training
    model.eval()
    try:
        with torch.enable_grad():
            loss, name = task_loss(model, inputs)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        model.train(was)
    log.info("gradient importance from the %s", name)
    return [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]


def llm_pruner_elements(model: nn.Module, inputs: Any, second_order: bool = False) -> dict[str, torch.Tensor]:
    """LLM-Pruner (Ma et al. 2023, "LLM-Pruner: On the Structural Pruning of Large Language Models"): per weight
    ``g w`` of the LM loss (summed per unit and taken ``|.|`` it is the vector-wise ``|g^T W|`` of Eq. 3), or
    with ``second_order`` the element-wise ``|g w - (g w)^2 / 2|`` (Eq. 5, diagonal Fisher ``H ~ g g^T``)."""
    named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    req = {n: p.requires_grad for n, p in named}
    for _, p in named:
        p.requires_grad_(True)
    try:
        grads = grads_of(model, inputs, [p for _, p in named])
    finally:
        for n, p in named:
            p.requires_grad_(req[n])
    out = {}
    for (n, p), g in zip(named, grads):
        gw = (g * p.detach()).float().cpu()
        out[n] = (gw - 0.5 * gw * gw).abs() if second_order else gw
    return out


def loraprune_elements(model: nn.Module, inputs: Any, rank: int = 8, seed: int = 0,
                       adapters: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
    """LoRAPrune (Zhang et al. 2023, "LoRAPrune: Structured Pruning Meets Low-Rank Parameter-Efficient
    Fine-Tuning", Eq. 7-8): every ``nn.Linear`` ``W`` gets an adapter ``B A``; only ``A`` and ``B`` receive
    gradients, the weight gradient is estimated as ``dL/dW ~ dL/dB A + B dL/dA`` and the importance of each
    weight is ``|(W + B A) * (dL/dB A + B dL/dA)|``. ``adapters`` maps a layer to trained ``(A (r, in), B (out, r))``;
    otherwise ``A ~ N(0, 1/r)`` (seeded), ``B = 0`` as LoRA initializes them, which makes the estimate the
    rank-``r`` sketch ``(dL/dW) A^T A`` of the gradient (``E[A^T A] = I``), with no weight gradient stored."""
    gen = torch.Generator().manual_seed(seed)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    ab, hooks = {}, []
    for n, m in linears:
        if adapters is not None and n in adapters:
            a, b = (t.detach().clone().to(m.weight) for t in adapters[n])
        elif adapters is None:
            a = (torch.randn(rank, m.in_features, generator=gen) / rank**0.5).to(m.weight)  # (r, in)
            b = torch.zeros(m.out_features, rank).to(m.weight)  # (out, r)
        else:
            continue
        a.requires_grad_(True)
        b.requires_grad_(True)
        ab[n] = (a, b)
        hooks.append(m.register_forward_hook(lambda _m, args, y, a=a, b=b: y + args[0] @ a.T @ b.T))
    req = {p: p.requires_grad for p in model.parameters()}
    for p in req:
        p.requires_grad_(False)
    flat = [t for pair in ab.values() for t in pair]
    try:
        grads = grads_of(model, inputs, flat) if flat else []
    finally:
        for h in hooks:
            h.remove()
        for p, r in req.items():
            p.requires_grad_(r)
    out = {}
    for i, (n, (a, b)) in enumerate(ab.items()):
        ga, gb = grads[2 * i], grads[2 * i + 1]
        g_est = gb @ a.detach() + b.detach() @ ga  # (out, in)
        w = model.get_submodule(n).weight.detach()
        out[f"{n}.weight"] = ((w + b.detach() @ a.detach()) * g_est).abs().float().cpu()
    return out


def element_scores(model: nn.Module, inputs: Any, importance: str, seed: int = 0) -> tuple[dict[str, torch.Tensor],
                                                                                          bool]:
    """Per-weight values of ``importance`` and whether a unit's score is ``|sum|`` (vector-wise) or a sum."""
    if importance == "loraprune":
        return loraprune_elements(model, inputs, seed=seed), False
    if importance == "llm-pruner-element":
        return llm_pruner_elements(model, inputs, second_order=True), False
    if importance == "llm-pruner":
        return llm_pruner_elements(model, inputs), True
    raise ValueError(f"unknown element-wise importance {importance!r}; accepted: llm-pruner, llm-pruner-element, "
                     "loraprune")
