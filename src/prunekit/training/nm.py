"""N:M sparse training from scratch with SR-STE (Zhou et al. 2021, "Learning N:M Fine-grained Structured
Sparse Neural Networks From Scratch").

The forward pass sees W~ = W * E, where E keeps the ``n`` largest |W| of every ``m`` consecutive weights
along the input dimension (the layout of ``patterns.NM``); the backward pass applies the gradient of W~
straight through to the dense W plus a decay on the pruned ones (SR-STE update rule):

    W <- W - lr * (dL/dW~ + lambda_W * (1 - E) * W)

Between optimizer steps the model's weights ARE the sparse W~ (exactly ``n`` of ``m`` kept, so
evaluation and checkpoints see the N:M model); the dense W lives in the callback and is swapped in only
for the optimizer step. At the end of ``fit`` the final masks are attached, so fine-tuning keeps them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..layers import Ledger, classify
from ..masks import DEFAULT_EXCLUDE, attach, attached
from ..oneshot import weight_mask
from ..patterns import NM, check_pattern_fits, nm_mask
from .distributed import check_masks_synced, unwrap
from .loop import Batch, Callback, TrainState

log = logging.getLogger(__name__)


def srste_grad(grad: Tensor, weight: Tensor, mask: Tensor, decay: float) -> Tensor:
    """dL/dW~ + lambda_W (1 - E) * W: the SR-STE gradient of the dense weight."""
    return grad + decay * (~mask) * weight


def nm_masks_of(weights: dict[str, Tensor], n: int, m: int, ledger: Ledger | None = None) -> dict[str, Tensor]:
    """Keep the ``n`` largest |W| of every ``m`` along the input dimension, per layer.

    With the model's ``ledger`` the input dimension is each weight's own (GPT-2 ``Conv1D`` stores
    ``(in, out)``; a fused expert tensor ``(E, out, in)`` is E matrices); without one, dim 1 as stored."""
    if ledger is None:
        return {k: nm_mask(w.detach().abs(), n, m) for k, w in weights.items()}
    return {k: weight_mask(ledger, k, w.detach().abs(), None, NM(n, m)) for k, w in weights.items()}


@dataclass
class SRSTE(Callback):
    """N:M training with SR-STE: sparse forward, straight-through gradient plus decay ``decay`` (lambda_W,
    2e-4 in the paper) on pruned weights; masks recomputed from the dense weights after every step.

    Put it first in ``callbacks`` so the others see the sparse weights. Layers whose input dimension is
    not a multiple of ``m`` are an error naming them; leave them out with ``exclude``.
    """

    n: int = 2
    m: int = 4
    decay: float = 2e-4
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    include: list[str] | None = None
    check_every: int = 100
    attach_at_end: bool = True
    dense: dict[str, Tensor] = field(default_factory=dict, init=False, repr=False)
    masks: dict[str, Tensor] = field(default_factory=dict, init=False, repr=False)
    flips: list[tuple[int, int]] = field(default_factory=list, init=False)
    _params: dict[str, nn.Parameter] = field(default_factory=dict, init=False, repr=False)
    _ledger: Ledger | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.pattern = NM(self.n, self.m)  # validates 0 < n < m
        if isinstance(self.decay, bool) or not isinstance(self.decay, (int, float)) or not self.decay >= 0:
            raise ValueError(f"decay (lambda_W) must be a number >= 0, got {self.decay!r}")
        if isinstance(self.check_every, bool) or not isinstance(self.check_every, int) or self.check_every < 1:
            raise ValueError(f"check_every must be a positive integer, got {self.check_every!r}")
        self.exclude = list(self.exclude)

    def on_fit_start(self, state: TrainState) -> None:
        net = unwrap(state.model)
        self._ledger = classify(net, exclude=self.exclude, include=self.include)
        params = self._ledger.parameters(net)
        if not params:
            raise ValueError("SRSTE found no prunable layers (Linear, Conv, GPT-2 Conv1D, MoE experts...); check "
                             "exclude / include")
        for k, p in params.items():
            check_pattern_fits(self._ledger.prunable[k].as_matrices(p.detach(), keep_kernel=True).shape[1:],
                               self.pattern, k)
        ms = attached(net)
        if ms is not None:  # the dense weights train; attached masks would zero them after each step
            log.info("SRSTE: baking the masks attached before training (pruned weights stay at zero to start)")
            ms.bake()
        self._params = dict(params)
        with torch.no_grad():
            if set(self.dense) != set(params):  # a fresh start (else resumed from state_dict)
                self.dense = {k: p.detach().clone() for k, p in params.items()}
            self.dense = {k: v.to(params[k].device, params[k].dtype) for k, v in self.dense.items()}
            self._sparsify()
        check_masks_synced(self.masks, "at the start of training")

    @torch.no_grad()
    def _sparsify(self) -> None:
        """Recompute E from the dense weights and load W~ = W * E into the model."""
        self.masks = nm_masks_of(self.dense, self.n, self.m, self._ledger)
        for k, p in self._params.items():
            p.copy_(self.dense[k] * self.masks[k])

    def on_after_backward(self, state: TrainState, batch: Batch) -> None:
        """Add the SR-STE decay to the straight-through gradient and swap the dense weights in."""
        with torch.no_grad():
            for k, p in self._params.items():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad.copy_(srste_grad(p.grad, self.dense[k], self.masks[k], float(self.decay)))
                p.copy_(self.dense[k])  # the optimizer updates the dense weights

    def on_step_end(self, state: TrainState, batch: Batch) -> None:
        """Keep the updated dense weights, recompute the N:M masks, load the sparse weights back."""
        old = self.masks
        with torch.no_grad():
            for k, p in self._params.items():
                self.dense[k].copy_(p)
            self._sparsify()
        flips = sum(int((old[k] != self.masks[k]).sum()) for k in old)
        self.flips.append((state.step, flips))
        if state.step % self.check_every == 0:
            check_masks_synced(self.masks, f"at step {state.step}")

    def on_fit_end(self, state: TrainState) -> None:
        check_masks_synced(self.masks, "at the end of training")
        if self.attach_at_end:
            attach(unwrap(state.model), {k: m.clone() for k, m in self.masks.items()})

    def state_dict(self) -> dict[str, Any]:
        return {"dense": {k: v.clone() for k, v in self.dense.items()}, "flips": [list(f) for f in self.flips]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dense = {k: torch.as_tensor(v).clone() for k, v in state.get("dense", {}).items()}
        self.flips = [tuple(f) for f in state.get("flips", [])]  # type: ignore[misc]
