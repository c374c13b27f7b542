"""LoRA adapters through peft on the pruned linears, with the update masked so the sparsity pattern survives.

LoRA (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models", Eq. 3) adds ``s * B A`` to a
frozen ``W``. Merged as is, ``B A`` is dense and would fill the pruned entries; PERP's MaskLoRA
(Zimmer et al. 2023, Sec. 3.2) multiplies the update by the mask, ``W + M * (s * B A)``, both while
training and at merge, so what is trained is exactly what is saved and every pruned weight stays zero.
Layers without a mask (a structured, slim model) get plain LoRA. peft (the ``lora`` extra) is imported here only.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

MASK_ATTR = "prunekit_mask"


@functools.cache
def masked_lora_class() -> type:
    """peft's LoRA ``Linear`` whose delta weight is multiplied by the base layer's mask (built on first use)."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError as e:
        raise ImportError("recovery with LoRA needs peft: install the 'lora' extra (pip install prunekit[lora])") \
            from e

    class MaskedLoraLinear(LoraLinear):
        """LoRA on a pruned linear: ``y = x (W + M * s B A)^T + b`` (MaskLoRA)."""

        def _mask(self) -> Tensor | None:
            return getattr(self.get_base_layer(), MASK_ATTR, None)

        def get_delta_weight(self, adapter: str) -> Tensor:
            delta = super().get_delta_weight(adapter)  # (out, in)
            m = self._mask()
            return delta if m is None else delta * m.to(delta.dtype)

        def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            m = self._mask()
            if m is None or self.merged or self.disable_adapters:
                return super().forward(x, *args, **kwargs)
            base = self.get_base_layer()
            w = base.weight
            for a in self.active_adapters:
                if a in self.lora_A:
                    w = w + self.get_delta_weight(a)
            return F.linear(x, w, base.bias)

    return MaskedLoraLinear


def add_lora(model: nn.Module, layers: list[str], masks: dict[str, Tensor], rank: int, alpha: float,
             seed: int = 0) -> dict[str, nn.Parameter]:
    """Inject rank-``rank`` adapters into ``layers`` (masked where ``masks`` has ``<layer>.weight``); return
    the adapter parameters (everything else frozen)."""
    if not layers:
        raise ValueError("LoRA recovery found no linear layer to adapt (all excluded?)")
    from peft import LoraConfig, inject_adapter_in_model

    for name in layers:
        mod = model.get_submodule(name)
        m = masks.get(f"{name}.weight")
        if m is not None:
            mod.register_buffer(MASK_ATTR, m.to(mod.weight.device), persistent=False)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=list(layers))
    cfg._register_custom_module({nn.Linear: masked_lora_class()})
    torch.manual_seed(seed)
    inject_adapter_in_model(cfg, model)
    for p in model.parameters():
        p.requires_grad_(False)
    params = {n: p for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n}
    for p in params.values():
        p.requires_grad_(True)
    return params


def merge_lora(model: nn.Module) -> int:
    """Merge every adapter into its base layer, put the plain layer back, drop the mask buffers; return the
    number of layers merged."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped = [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, mod in wrapped:
        mod.merge()
        base = mod.get_base_layer()
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, base)
        if MASK_ATTR in base._buffers:
            del base._buffers[MASK_ATTR]
    return len(wrapped)
