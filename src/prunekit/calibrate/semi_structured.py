"""GPU path: 2:4-pruned Linear weights as ``torch.sparse.to_sparse_semi_structured`` tensors.

Ampere-or-newer NVIDIA GPUs multiply a 2:4 sparse weight (2 kept of every 4 consecutive inputs) with
dedicated kernels (Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks"). Whether that is
faster than dense depends on the shapes and the batch: ``benchmarks/llm_semi_structured.py``
measures it. Needs CUDA and fp16/bf16 weights; without CUDA every entry point raises a clear error.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from ..patterns import NM, mask_respects

log = logging.getLogger(__name__)
DTYPES = (torch.float16, torch.bfloat16)


def semi_structured_available() -> bool:
    """True when CUDA is present and the GPU is Ampere (compute capability 8.0) or newer."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def _check_weight(W: Tensor, name: str) -> None:
    if not semi_structured_available():
        raise RuntimeError("2:4 semi-structured tensors need a CUDA GPU of compute capability >= 8.0 (Ampere+)")
    if W.dtype not in DTYPES:
        raise ValueError(f"{name}: semi-structured weights must be float16 or bfloat16, got {W.dtype}")
    if W.dim() != 2 or W.shape[0] % 32 or W.shape[1] % 64:
        raise ValueError(f"{name}: shape {list(W.shape)} must be 2-D with rows % 32 == 0 and columns % 64 == 0")
    if not mask_respects(W != 0, NM(2, 4)):
        raise ValueError(f"{name}: the weight is not 2:4 sparse along its input dimension (prune it with 2:4 first)")


def to_semi_structured(W: Tensor, name: str = "weight") -> Tensor:
    """A 2:4-sparse ``(out, in)`` CUDA weight as a semi-structured sparse tensor."""
    from torch.sparse import to_sparse_semi_structured

    _check_weight(W, name)
    return to_sparse_semi_structured(W)


def export_semi_structured_(model: nn.Module, names: list[str] | None = None) -> list[str]:
    """Swap the weights of 2:4-sparse ``nn.Linear`` layers for semi-structured tensors, in place.

    Layers whose weight is not 2:4, not CUDA fp16/bf16, or of an unsupported shape are left dense
    (and logged); returns the names of the converted layers. Inference only.
    """
    if not semi_structured_available():
        raise RuntimeError("2:4 semi-structured export needs a CUDA GPU of compute capability >= 8.0 (Ampere+)")
    done = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or (names is not None and name not in names):
            continue
        try:
            sparse = to_semi_structured(mod.weight.detach(), name)
        except ValueError as e:
            log.info("left dense: %s", e)
            continue
        mod.weight = nn.Parameter(sparse, requires_grad=False)
        done.append(name)
    return done
