"""Recovery after pruning: PERP (biases + norms), masked LoRA through peft, distillation from the dense model."""

from __future__ import annotations

from .config import Recovery
from .core import pruned_nonzeros, recover_, target_linears
from .folder import recover_dir

__all__ = ["Recovery", "recover_", "recover_dir", "pruned_nonzeros", "target_linears"]
