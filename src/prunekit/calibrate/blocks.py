"""Generic access to a transformer's blocks: find its stacks of blocks, capture what each block receives."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


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


@dataclass
class Stack:
    """One list of transformer blocks and how to drive the model up to it.

    ``part`` is ``"blocks"`` (decoder-only or encoder-only model: the model itself is called),
    ``"encoder"`` or ``"decoder"`` (an encoder-decoder model: the stack's owner is called, the
    decoder with the encoder's output as cross-attention input).
    """

    prefix: str
    blocks: nn.ModuleList
    part: str
    owner: nn.Module


def find_stacks(model: nn.Module) -> list[Stack]:
    """The block stacks to calibrate in order: the encoder's then the decoder's for an encoder-decoder model."""
    cfg = getattr(model, "config", None)
    if not getattr(cfg, "is_encoder_decoder", False):
        prefix, blocks = find_blocks(model)
        return [Stack(prefix, blocks, "blocks", model)]
    if not (hasattr(model, "get_encoder") and hasattr(model, "get_decoder")):
        raise ValueError(f"{type(model).__name__} is an encoder-decoder model without get_encoder()/get_decoder(); "
                         "the calibration engine cannot reach both of its stacks")
    names = {id(m): n for n, m in model.named_modules()}
    stacks = []
    for part, owner in (("encoder", model.get_encoder()), ("decoder", model.get_decoder())):
        prefix, blocks = find_blocks(owner)
        stacks.append(Stack(f"{names[id(owner)]}.{prefix}".strip("."), blocks, part, owner))
    return stacks


def shift_right(ids: Tensor, start: int) -> Tensor:
    """Decoder inputs of a sequence-to-sequence model: ``start`` then ``ids`` without its last token."""
    return torch.cat([torch.full_like(ids[:, :1], start), ids[:, :-1]], dim=1)


def decoder_start(model: nn.Module) -> int:
    """``config.decoder_start_token_id``, else ``pad_token_id``, else 0."""
    cfg = model.config
    for key in ("decoder_start_token_id", "pad_token_id"):
        v = getattr(cfg, key, None)
        if isinstance(v, int):
            return v
    return 0


def stack_runner(model: nn.Module, stacks: list[Stack], k: int) -> Callable[[Tensor], Any]:
    """A function that runs the model on token ids far enough to reach every block of ``stacks[k]``."""
    st = stacks[k]
    if st.part == "blocks":
        extra = forward_kwargs(model)
        return lambda ids: model(input_ids=ids, **extra)
    if st.part == "encoder":
        return lambda ids: st.owner(input_ids=ids)
    encoder, start, extra = stacks[0].owner, decoder_start(model), forward_kwargs(st.owner)

    def run_decoder(ids: Tensor) -> Any:
        enc = encoder(input_ids=ids)[0]  # (B, L, d): the (already pruned) encoder's output
        return st.owner(input_ids=shift_right(ids, start), encoder_hidden_states=enc, **extra)

    return run_decoder


DROP_KWARGS = ("past_key_value", "past_key_values", "layer_past", "cache")


def _same(a: Any, b: Any) -> bool:
    if torch.is_tensor(a) or torch.is_tensor(b):
        return _share(a, b) is b and torch.is_tensor(b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except Exception:  # objects without a usable ==
        return a is b


@dataclass
class StackInputs:
    """What every block of one stack receives: block 0's hidden states per batch, and per block and batch
    the other call arguments (position embeddings, masks, T5 position biases, encoder states)."""

    first: list[BlockInput]
    extras: list[list[tuple[tuple, dict]]]  # [block][batch] -> (args, kwargs)
    uniform: bool = True  # every block got block 0's extra arguments (later batches stopped at block 0)

    def for_block(self, i: int, hidden: list[Tensor]) -> list[BlockInput]:
        """Block ``i``'s inputs with the given hidden states (one per batch)."""
        return [BlockInput(h, *self.extras[i][b]) for b, h in enumerate(hidden)]


class _Recorder:
    """Pre-hooks on every block that record its call arguments, stopping the forward at the last block."""

    def __init__(self, blocks: nn.ModuleList, store: torch.device) -> None:
        self.n, self.store, self.stop_at = len(blocks), store, 0
        self.batch: list[tuple[Tensor | None, tuple, dict]] = []
        self.handles = [b.register_forward_pre_hook(self._hook(i), with_kwargs=True) for i, b in enumerate(blocks)]

    def _hook(self, i: int) -> Callable:
        def hook(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs.get("hidden_states")
            kw = {k: v for k, v in kwargs.items() if k not in DROP_KWARGS and not (not args and k == "hidden_states")}
            rest = _to(args[1:], self.store)
            self.batch.append((hidden.detach().to(self.store) if i == 0 else None, rest, _to(kw, self.store)))
            if i >= self.stop_at:
                raise _Stop

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _probe_uniform(run: Callable[[Tensor], Any], rec: _Recorder, ids: Tensor) -> bool:
    """Run ``ids`` through every block but the last; whether each block got block 0's extra arguments."""
    rec.batch = []
    try:
        run(ids)
    except _Stop:
        pass
    if not rec.batch:
        raise RuntimeError("the model did not call its first block on a calibration batch")
    _, args, kw = rec.batch[0]
    return all(_same((a, k), (args, kw)) for _, a, k in rec.batch[1:])


def capture_stack(run: Callable[[Tensor], Any], blocks: nn.ModuleList, batches: list[Tensor],
                  device: torch.device, store: torch.device, probe: bool = True) -> StackInputs:
    """Run the model (``run(ids)``) on each batch up to the stack; return what each of its blocks receives.

    A probe (the first sequence of the first batch, or the whole batch with ``probe=False``) runs
    through every block but the last, recording each block's call arguments. When every block got
    the same extra arguments as block 0 (the usual case), every batch stops at block 0; otherwise
    (T5's shared position biases, per-layer attention masks) every batch runs through the stack.
    """
    rec = _Recorder(blocks, store)
    rec.stop_at = len(blocks) - 1
    first: list[BlockInput] = []
    extras: list[list[tuple[tuple, dict]]] = [[] for _ in blocks]
    uniform = True
    try:
        with torch.no_grad(), offloaded(blocks, device):
            if probe and len(blocks) > 1 and batches and batches[0].shape[0] > 1:
                uniform = _probe_uniform(run, rec, batches[0][:1].to(device))
                rec.stop_at = 0 if uniform else len(blocks) - 1
            for b, ids in enumerate(batches):
                rec.batch = []
                try:
                    run(ids.to(device))
                except _Stop:
                    pass
                if not rec.batch or rec.batch[0][0] is None:
                    raise RuntimeError("the model did not call its first block on a calibration batch")
                hidden, args, kw = rec.batch[0]
                prev = first[-1] if first else None
                if prev is not None:
                    args, kw = _share(args, prev.args), {k: _share(v, prev.kwargs.get(k)) for k, v in kw.items()}
                first.append(BlockInput(hidden, args, kw))
                if b == 0 and rec.stop_at > 0:
                    uniform = all(_same((a, k), (args, kw)) for _, a, k in rec.batch[1:])
                    rec.stop_at = 0 if uniform else len(blocks) - 1
                    if not uniform:
                        log.info("blocks receive different call arguments (e.g. shared position biases, per-layer "
                                 "masks): each calibration batch runs through the stack to record them")
                _add_extras(extras, rec.batch, args, kw, uniform, len(blocks))
    finally:
        rec.remove()
    return StackInputs(first, extras, uniform)


def _add_extras(extras: list[list[tuple[tuple, dict]]], rec: list, args: tuple, kw: dict, uniform: bool,
                n: int) -> None:
    if uniform:
        for i in range(n):
            extras[i].append((args, kw))
        return
    if len(rec) != n:
        raise RuntimeError(f"the model called {len(rec)} of its {n} blocks on a calibration batch")
    extras[0].append((args, kw))
    for i in range(1, n):
        pa, pk = extras[i - 1][-1]
        a, k = rec[i][1], rec[i][2]
        extras[i].append((_share(a, pa), {key: _share(v, pk.get(key)) for key, v in k.items()}))


@contextmanager
def offloaded(blocks: nn.ModuleList, device: torch.device) -> Iterator[None]:
    """While inside, each block moves to ``device`` when called and back to where it was after."""
    homes = {id(b): next(b.parameters()).device for b in blocks}

    def pre(mod: nn.Module, _args: tuple) -> None:
        if next(mod.parameters()).device != device:
            mod.to(device)

    def post(mod: nn.Module, _args: tuple, _out: Any) -> None:
        if next(mod.parameters()).device != homes[id(mod)]:
            mod.to(homes[id(mod)])

    handles = [h for b in blocks for h in (b.register_forward_pre_hook(pre), b.register_forward_hook(post))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for b in blocks:
            if next(b.parameters()).device != homes[id(b)]:
                b.to(homes[id(b)])


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
