"""Masks on a model: attach, keep pruned weights exactly zero through training, bake, report, save, load.

A mask is a ``torch.bool`` tensor shaped like the parameter it masks, ``True`` = keep. Attaching
stores it as a non-persistent buffer ``<param>_mask`` on the owning module (so ``state_dict`` keeps
its keys), zeroes the pruned weights, and masks their gradients. ``MaskSet.watch(optimizer)``
re-zeroes the weights and every optimizer state tensor shaped like them (momentum, Adam moments)
after each ``optimizer.step()``, so pruned weights are exactly 0.0 after every step.
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
    """The masks attached to one model and the hooks that enforce them."""

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
        self.mask_grads = True  # RigL turns this off for a step to read dense gradients
        self._handles: list[Any] = []
        self._optimizers: list[torch.optim.Optimizer] = []
        for name, m in masks.items():
            mod, attr = _owner(model, name)
            buf = m.to(device=self.params[name].device, dtype=torch.bool).clone()
            mod.register_buffer(f"{attr}_mask", buf, persistent=False)
            self.masks[name] = getattr(mod, f"{attr}_mask")
            self._handles.append(self.params[name].register_hook(self._grad_hook(name)))
        self.apply_()

    def _grad_hook(self, name: str):
        def hook(grad: Tensor) -> Tensor:
            return grad * self.masks[name] if self.mask_grads else grad

        return hook

    @torch.no_grad()
    def apply_(self) -> None:
        """Zero every pruned weight (and its state in watched optimizers)."""
        for name, p in self.params.items():
            p.mul_(self.masks[name])
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
        """After every ``optimizer.step()``, re-zero pruned weights and their optimizer state."""
        if any(o is optimizer for o in self._optimizers):
            return self
        self._optimizers.append(optimizer)

        def post(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            with torch.no_grad():
                for name, p in self.params.items():
                    p.mul_(self.masks[name])
                self.mask_optimizer_state(opt)

        self._handles.append(optimizer.register_step_post_hook(post))
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
        for h in self._handles:
            h.remove()
        self._handles.clear()
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


def save_masks(path: str | os.PathLike, masks: dict[str, Tensor], metadata: dict[str, Any] | None = None) -> Path:
    """Save bool masks as safetensors (atomic), with a JSON ``metadata`` block."""
    bad = [k for k, m in masks.items() if m.dtype != torch.bool]
    if bad:
        raise ValueError(f"masks must be torch.bool (True = keep); not bool: {bad}")
    meta = {"format": MASKS_FORMAT, "version": MASKS_VERSION, "json": json.dumps(metadata or {}, sort_keys=True)}
    return save_tensors(path, masks, meta)


def load_masks(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Load masks saved by ``save_masks``; a file of another kind is a clear error."""
    tensors, meta = load_tensors(path, "mask file")
    if meta.get("format") != MASKS_FORMAT:
        raise ValueError(f"{path} is not a prunekit mask file (metadata format={meta.get('format')!r})")
    bad = [k for k, t in tensors.items() if t.dtype != torch.bool]
    if bad:
        raise ValueError(f"mask file {path} holds non-bool tensors {bad}")
    return tensors, json.loads(meta.get("json", "{}"))


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
