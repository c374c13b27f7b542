"""Generic access to a transformer's blocks: find them, list their Linear layers, capture their inputs."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn


def is_linear(mod: nn.Module) -> bool:
    """``nn.Linear`` or transformers' GPT-2 ``Conv1D`` (a Linear storing its weight as (in, out))."""
    return isinstance(mod, nn.Linear) or (type(mod).__name__ == "Conv1D" and hasattr(mod, "nf"))


def weight_2d(mod: nn.Module) -> Tensor:
    """The weight as ``(out, in)`` (a transposed view for ``Conv1D``)."""
    w = mod.weight.detach()
    return w.t() if type(mod).__name__ == "Conv1D" else w


def set_weight_2d(mod: nn.Module, W: Tensor) -> None:
    """Write an ``(out, in)`` weight back in the module's own layout and dtype."""
    w = W.t() if type(mod).__name__ == "Conv1D" else W
    with torch.no_grad():
        mod.weight.copy_(w.to(mod.weight.dtype))


def mask_to_param(mod: nn.Module, mask: Tensor) -> Tensor:
    """An ``(out, in)`` mask in the layout of the module's weight parameter."""
    return (mask.t() if type(mod).__name__ == "Conv1D" else mask).contiguous()


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The transformer's list of blocks: the ModuleList of same-class modules holding the most parameters."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, ml in model.named_modules():
        if not isinstance(ml, nn.ModuleList) or len(ml) == 0:
            continue
        if len({type(b) for b in ml}) != 1 or not any(is_linear(m) for m in ml[0].modules()):
            continue
        n = sum(p.numel() for p in ml.parameters())
        if best is None or n > best[0]:
            best = (n, name, ml)
    if best is None:
        raise ValueError(
            f"{type(model).__name__} has no list of transformer blocks (an nn.ModuleList of identical "
            "modules containing Linear layers); the calibration engine needs one"
        )
    return best[1], best[2]


def block_layers(block: nn.Module, exclude: list[str] | tuple[str, ...] = ()) -> dict[str, nn.Module]:
    """``{relative name: module}`` of the Linear layers of ``block``, minus names ending in ``exclude``."""
    out = {}
    for name, mod in block.named_modules():
        if is_linear(mod) and not any(name == e or name.endswith("." + e) for e in exclude):
            out[name] = mod
    return out


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model's config accepts (``max_position_embeddings`` or ``n_positions``)."""
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


@dataclass
class BlockInput:
    """What one calibration batch feeds a block: hidden states plus the other call arguments."""

    hidden: Tensor  # (B, L, d)
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


class _Stop(Exception):
    """Raised by the capture hook to end the forward pass at the first block."""


def _share(value: Any, prev: Any) -> Any:
    """``prev`` when equal to ``value`` (so identical masks / positions are stored once)."""
    if torch.is_tensor(value) and torch.is_tensor(prev):
        if value.shape == prev.shape and value.dtype == prev.dtype and torch.equal(value, prev.to(value.device)):
            return prev
        return value
    if isinstance(value, tuple) and isinstance(prev, tuple) and len(value) == len(prev):
        return tuple(_share(v, p) for v, p in zip(value, prev))
    return value


def _to(value: Any, device: torch.device) -> Any:
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def to_device(inp: BlockInput, device: torch.device) -> BlockInput:
    """The same block input with its tensors on ``device``."""
    return BlockInput(inp.hidden.to(device), _to(inp.args, device), _to(inp.kwargs, device))


def forward_kwargs(model: nn.Module) -> dict[str, Any]:
    """Keyword arguments that switch caches off when the model's forward accepts them."""
    params = inspect.signature(model.forward).parameters
    return {"use_cache": False} if "use_cache" in params else {}


def capture_inputs(model: nn.Module, first_block: nn.Module, batches: list[Tensor], device: torch.device,
                   store: torch.device) -> list[BlockInput]:
    """Run the model up to ``first_block`` on each batch of token ids; return what the block receives."""
    captured: list[BlockInput] = []

    def hook(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        rest = args[1:] if args else ()
        prev = captured[-1] if captured else None
        kw = {k: v for k, v in kwargs.items() if k not in ("past_key_value", "past_key_values", "layer_past")}
        kw = _to(kw, store)
        if prev is not None:
            kw = {k: _share(v, prev.kwargs.get(k)) for k, v in kw.items()}
        captured.append(BlockInput(hidden.detach().to(store), _to(rest, store), kw))
        raise _Stop

    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    extra = forward_kwargs(model)
    try:
        with torch.no_grad():
            for ids in batches:
                try:
                    model(input_ids=ids.to(device), **extra)
                except _Stop:
                    pass
    finally:
        handle.remove()
    if len(captured) != len(batches):
        raise RuntimeError(f"captured {len(captured)} block inputs for {len(batches)} batches: the model did not "
                           "call its first block on every batch")
    return captured


def run_block(block: nn.Module, inp: BlockInput) -> Tensor:
    """Call a block on one captured input; return its hidden-state output."""
    out = block(inp.hidden, *inp.args, **inp.kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def move_outside_blocks(model: nn.Module, blocks: nn.ModuleList, device: torch.device) -> None:
    """Move every parameter and buffer that is not inside ``blocks`` to ``device`` (embeddings, norms, head)."""
    inside = {id(t) for t in list(blocks.parameters()) + list(blocks.buffers())}
    for mod in model.modules():
        for _name, p in list(mod.named_parameters(recurse=False)):
            if id(p) not in inside and p.device != device:
                p.data = p.data.to(device)
        for name, b in list(mod.named_buffers(recurse=False)):
            if id(b) not in inside and b.device != device:
                mod._buffers[name] = b.to(device)
