"""Masks on a model: attach, keep pruned weights exactly zero through training, bake, report, save, load.

A mask is a ``torch.bool`` tensor shaped like the parameter it masks, ``True`` = keep. Attaching
stores it as a non-persistent buffer ``<param>_mask`` on the owning module (so ``state_dict`` keeps
its keys), zeroes the pruned weights, and masks their gradients. ``MaskSet.watch(optimizer)``
masks the gradients before each ``optimizer.step()`` (so momentum and Adam moments of pruned weights
stay exactly zero) and re-zeroes the weights after it, so pruned weights are exactly 0.0 after every step.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .io import load_tensors, save_tensors
from .layers import DEFAULT_EXCLUDE, LABELS, Ledger, classify

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # kept for old callers
MASKS_FORMAT = "prunekit.masks"
MASKS_VERSION = "1"


def _is_prunable(module: nn.Module) -> bool:
    """True for a module whose own ``weight`` is prunable (see ``layers.classify`` for every kind)."""
    w = getattr(module, "weight", None)
    if not isinstance(w, nn.Parameter) or w.dim() < 2:
        return False
    return "weight" in classify(module, exclude=(), strict=False).prunable


def prunable_parameters(model: nn.Module, exclude: Iterable[str] = DEFAULT_EXCLUDE,
                        include: Iterable[str] | None = None, embeddings: bool = False) -> dict[str, nn.Parameter]:
    """``{name: parameter}`` of every prunable weight (``layers.classify``), in module order.

    Linear, Conv, transposed Conv, GPT-2 Conv1D, ``nn.MultiheadAttention`` projections, RNN/LSTM/GRU
    ``weight_ih/hh``, fused 3-D MoE experts, and ``nn.Embedding`` with ``embeddings=True``. ``exclude``
    keeps modules or parameters whose name equals, ends with or glob-matches an entry (``lm_head`` by
    default); ``include`` keeps only the named ones (unknown names are an error). A rank >= 2 tensor no
    rule covers raises ``layers.UncoveredWeightError`` naming the ``exclude`` that accepts it.
    """
    return classify(model, exclude=exclude, include=include, embeddings=embeddings).parameters(model)


def _owner(model: nn.Module, param_name: str) -> tuple[nn.Module, str]:
    mod_name, _, attr = param_name.rpartition(".")
    return (model.get_submodule(mod_name) if mod_name else model), attr


def _params_of(model: nn.Module) -> dict[str, nn.Parameter]:
    return dict(model.named_parameters())


class MaskSet:
    """The masks attached to one model and the hooks that enforce them.

    Enforcement costs two fused ops per optimizer step: a step pre-hook multiplies every gradient by
    its mask (one ``torch._foreach_mul_`` per device and dtype), so momentum and Adam moments of pruned
    weights are never fed and stay exactly zero; a step post-hook multiplies the weights by their masks,
    so pruned weights are exactly 0.0 after every step whatever the optimizer does. Optimizer state is
    masked once when an optimizer is watched and whenever masks change (``apply_``/``update_``); while
    one is watched each mask is also kept in its weight's dtype for these multiplies. Until an optimizer
    is watched, per-parameter gradient hooks mask gradients during backward instead (gradients read
    between ``backward()`` and ``step()`` of a watched optimizer are dense).
    """

    def __init__(self, model: nn.Module, masks: dict[str, Tensor]) -> None:
        params = _params_of(model)
        for name, m in masks.items():
            if name not in params:
                raise ValueError(f"mask for unknown parameter {name!r}; parameters: {sorted(params)[:20]}...")
            if m.shape != params[name].shape:
                raise ValueError(f"mask {name!r} has shape {list(m.shape)}, the parameter {list(params[name].shape)}")
        self.model = model
        self.params = {k: params[k] for k in masks}
        self.masks: dict[str, Tensor] = {}
        self.mask_grads = True  # False: one backward pass leaves gradients dense (RigL reads them)
        self._handles: list[Any] = []
        self._grad_handles: list[Any] = []  # removed once an optimizer is watched (its pre-hook masks instead)
        self._optimizers: list[torch.optim.Optimizer] = []
        self._groups: list[tuple[list[nn.Parameter], list[Tensor]]] = []
        for name, m in masks.items():
            mod, attr = _owner(model, name)
            buf = m.to(device=self.params[name].device, dtype=torch.bool).clone()
            mod.register_buffer(f"{attr}_mask", buf, persistent=False)
            self._grad_handles.append(self.params[name].register_hook(self._grad_hook(name)))
        self.apply_()

    def _grad_hook(self, name: str):
        def hook(grad: Tensor) -> Tensor:
            return grad * self.masks[name] if self.mask_grads else grad

        return hook

    def _refresh(self) -> None:
        """Re-read the mask buffers (``model.to()`` replaces them) and group (param, mask) by device and dtype.

        While an optimizer is watched the groups hold each mask in its weight's dtype: a multiply by a bool
        tensor converts it on every call (4-8x slower on CPU), a training-time cost that a copy avoids.
        """
        groups: dict[tuple[torch.device, torch.dtype], tuple[list[nn.Parameter], list[Tensor]]] = {}
        for name, p in self.params.items():
            mod, attr = _owner(self.model, name)
            self.masks[name] = getattr(mod, f"{attr}_mask")
            ps, ms = groups.setdefault((p.device, p.dtype), ([], []))
            ps.append(p)
            ms.append(self.masks[name].to(p.dtype) if self._optimizers else self.masks[name])
        self._groups = list(groups.values())

    @torch.no_grad()
    def _mask_weights_(self) -> None:
        for ps, ms in self._groups:
            torch._foreach_mul_(ps, ms)

    @torch.no_grad()
    def mask_gradients_(self) -> None:
        """Multiply every present gradient by its mask (fused per device and dtype)."""
        for ps, ms in self._groups:
            grads = [p.grad for p in ps]
            if any(g is None or g.is_sparse for g in grads):
                for g, m in zip(grads, ms):
                    if g is not None:
                        g.mul_(m)
            elif grads:
                torch._foreach_mul_(grads, ms)

    @torch.no_grad()
    def apply_(self) -> None:
        """Zero every pruned weight (and its state in watched optimizers)."""
        self._refresh()
        self._mask_weights_()
        for opt in self._optimizers:
            self.mask_optimizer_state(opt)

    @torch.no_grad()
    def mask_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero the optimizer state (momentum, moments) of pruned weights."""
        for name, p in self.params.items():
            for v in optimizer.state.get(p, {}).values():
                if torch.is_tensor(v) and v.shape == p.shape:
                    v.mul_(self.masks[name])

    def watch(self, optimizer: torch.optim.Optimizer) -> MaskSet:
        """Mask gradients before, and pruned weights after, every ``optimizer.step()``; zero its state now."""
        if any(o is optimizer for o in self._optimizers):
            return self
        self._optimizers.append(optimizer)
        for h in self._grad_handles:  # the step pre-hook masks gradients in one fused op instead
            h.remove()
        self._grad_handles.clear()
        self._refresh()
        self._handles.append(optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.mask_gradients_()))
        self._handles.append(optimizer.register_step_post_hook(lambda opt, args, kwargs: self._mask_weights_()))
        self.mask_optimizer_state(optimizer)
        return self

    @torch.no_grad()
    def update_(self, masks: dict[str, Tensor]) -> None:
        """Replace some masks in place (hooks keep working) and re-apply them."""
        for name, m in masks.items():
            if name not in self.masks:
                raise ValueError(f"no mask attached for {name!r}; attached: {sorted(self.masks)}")
            self.masks[name].copy_(m.to(self.masks[name].device, torch.bool))
        self.apply_()

    def bake(self) -> dict[str, Tensor]:
        """Remove hooks and buffers; pruned weights stay zero. Returns the masks."""
        self.apply_()
        for h in [*self._handles, *self._grad_handles]:
            h.remove()
        self._handles.clear()
        self._grad_handles.clear()
        self._optimizers.clear()
        for name in self.masks:
            mod, attr = _owner(self.model, name)
            if hasattr(mod, f"{attr}_mask"):
                delattr(mod, f"{attr}_mask")
        if getattr(self.model, "_prunekit_masks", None) is self:
            del self.model._prunekit_masks
        return {k: v.detach().clone() for k, v in self.masks.items()}

    def sparsity(self) -> float:
        """Fraction of masked-out weights over all masked parameters."""
        total = sum(m.numel() for m in self.masks.values())
        return 1.0 - sum(int(m.sum()) for m in self.masks.values()) / max(total, 1)


def attach(model: nn.Module, masks: dict[str, Tensor]) -> MaskSet:
    """Attach ``masks`` to ``model`` (replacing masks attached before to the same parameters)."""
    old = getattr(model, "_prunekit_masks", None)
    if old is not None and set(masks) <= set(old.masks):
        old.update_(masks)  # in place: hooks and watched optimizers keep working
        return old
    optimizers: list[torch.optim.Optimizer] = []
    if old is not None:
        optimizers = list(old._optimizers)
        merged = {**{k: v.clone() for k, v in old.masks.items()}, **masks}
        old.bake()
        masks = merged
    ms = MaskSet(model, masks)
    object.__setattr__(model, "_prunekit_masks", ms)  # not a submodule, not in state_dict
    for opt in optimizers:
        ms.watch(opt)
    return ms


def attached(model: nn.Module) -> MaskSet | None:
    """The ``MaskSet`` attached to ``model``, if any (``fit`` watches its optimizer automatically)."""
    return getattr(model, "_prunekit_masks", None)


def masks_of(model: nn.Module) -> dict[str, Tensor]:
    """The masks attached to ``model``, read back from its ``<param>_mask`` buffers."""
    out = {}
    for mod_name, mod in model.named_modules():
        for b_name, b in mod.named_buffers(recurse=False):
            if b_name.endswith("_mask") and b.dtype == torch.bool:
                out[f"{mod_name}.{b_name[:-5]}" if mod_name else b_name[:-5]] = b
    return out


def masks_from_zeros(model: nn.Module, params: Iterable[str] | None = None) -> dict[str, Tensor]:
    """Masks that keep exactly the non-zero weights (e.g. of a baked checkpoint)."""
    named = _params_of(model)
    names = list(params) if params is not None else list(prunable_parameters(model))
    return {k: named[k].detach() != 0 for k in names}


def save_masks(path: str | os.PathLike, masks: dict[str, Tensor], metadata: dict[str, Any] | None = None, *,
               overwrite: bool = False) -> Path:
    """Save bool masks as safetensors (atomic, kind ``masks``), with a JSON ``metadata`` block.

    ``overwrite=False`` refuses an existing file (a masks file is one file, replaced whole).
    """
    from .io import FORMAT, VERSION, OutputExistsError

    bad = [k for k, m in masks.items() if m.dtype != torch.bool]
    if bad:
        raise ValueError(f"masks must be torch.bool (True = keep); not bool: {bad}")
    if not overwrite and Path(path).exists():
        raise OutputExistsError(f"masks file {path} already exists; pass overwrite=True (--overwrite) to replace it")
    meta = {"format": FORMAT, "version": str(VERSION), "kind": "masks",
            "json": json.dumps(metadata or {}, sort_keys=True)}
    return save_tensors(path, masks, meta)


def load_masks(path: str | os.PathLike, model: nn.Module | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Load masks saved by ``save_masks``; with ``model``, names and shapes must match its parameters.

    The file's header is checked (kind, bool dtype, names, shapes) before any tensor is read.
    """
    from .io import FORMAT, VERSION, check_tensor_file, tensor_header

    head, meta = tensor_header(path, "mask file")
    v2 = meta.get("format") == FORMAT and meta.get("version") == str(VERSION) and meta.get("kind") == "masks"
    if not v2 and meta.get("format") != MASKS_FORMAT:
        raise ValueError(f"{path} is not a prunekit mask file (metadata format={meta.get('format')!r}, "
                         f"kind={meta.get('kind')!r})")
    expected = {k: (None, torch.bool) for k in head} if model is None else \
        {k: (tuple(p.shape), torch.bool) for k, p in model.named_parameters()}
    check_tensor_file(path, expected, require_all=False, what="mask file")
    tensors, _ = load_tensors(path, "mask file")
    try:
        meta_json = json.loads(meta.get("json", "{}"))
    except json.JSONDecodeError as e:
        raise ValueError(f"mask file {path}: its metadata block is not valid JSON ({e})") from None
    return tensors, meta_json


@dataclass
class LayerReport:
    """What happened to one layer: sizes, target and reached sparsity, time, optional error."""

    name: str
    shape: list[int]
    numel: int
    sparsity: float
    target: float | None = None
    seconds: float = 0.0
    error: float | None = None


@dataclass
class Report:
    """What ``prune_`` did: per-layer sparsity, time, errors; ``masks`` is the attached ``MaskSet``.

    ``ledger`` (``layers.Ledger``): which tensors were pruned and which kept by which rule, with the
    labelled figures (pruned weights, all weight matrices, all parameters incl. biases) when measured.
    """

    method: dict[str, Any]
    layers: list[LayerReport] = field(default_factory=list)
    seconds: float = 0.0
    masks: MaskSet | None = field(default=None, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)
    ledger: Ledger | None = field(default=None, repr=False)

    @property
    def sparsity(self) -> float:
        """Sparsity over the pruned weights (parameter-weighted over the pruned layers)."""
        total = sum(r.numel for r in self.layers)
        return sum(r.sparsity * r.numel for r in self.layers) / max(total, 1)

    def to_dict(self) -> dict[str, Any]:
        out = {"method": self.method, "sparsity": self.sparsity, "sparsity_label": LABELS["pruned_weights"],
               "seconds": self.seconds, "layers": [asdict(r) for r in self.layers], "extra": self.extra}
        if self.ledger is not None:
            out["ledger"] = self.ledger.to_dict()
        return out

    def to_markdown(self) -> str:
        lines = ["| layer | shape | params | target | sparsity | error | s |", "|---|---|---:|---:|---:|---:|---:|"]
        for r in self.layers:
            tgt = "" if r.target is None else f"{r.target:.4f}"
            err = "" if r.error is None else f"{r.error:.4g}"
            lines.append(f"| {r.name} | {'x'.join(map(str, r.shape))} | {r.numel} | {tgt} | {r.sparsity:.4f} "
                         f"| {err} | {r.seconds:.3f} |")
        lines.append(f"| **total (pruned weights)** | | {sum(r.numel for r in self.layers)} | | {self.sparsity:.4f} "
                     f"| | {self.seconds:.3f} |")
        if self.ledger is not None:
            lines += ["", self.ledger.to_markdown()]
        return "\n".join(lines)


def layer_sparsity(t: Tensor) -> float:
    """Fraction of exact zeros in ``t``."""
    return 1.0 - int(torch.count_nonzero(t)) / max(t.numel(), 1)
