"""Knowledge distillation from a dense teacher as a loss term any training method can add."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .loop import Batch, Callback, TrainState


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(t / T) || softmax(s / T)), mean over the batch (Hinton et al. 2015, Sec. 2)."""
    t = float(temperature)
    log_p_s = nn.functional.log_softmax(student_logits / t, dim=-1)  # (B, C)
    log_p_t = nn.functional.log_softmax(teacher_logits / t, dim=-1)  # (B, C)
    return nn.functional.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t


@dataclass
class Distillation(Callback):
    """loss = (1 - alpha) * task loss + alpha * T^2 KL(teacher || student) at temperature T (Hinton et al. 2015).

    The teacher runs in eval mode without gradients on each training batch; it may be any module that
    maps the batch inputs to logits of the student's shape.
    """

    teacher: nn.Module
    alpha: float = 0.5
    temperature: float = 4.0
    last: dict[str, float] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, nn.Module):
            raise TypeError(f"teacher must be a torch.nn.Module, got {type(self.teacher).__name__}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha (weight of the distillation term) must be in [0, 1], got {self.alpha!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise ValueError(f"temperature must be a number > 0, got {t!r}")

    def on_fit_start(self, state: TrainState) -> None:
        self.teacher.to(state.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def loss(self, state: TrainState, batch: Batch, loss: Tensor) -> Tensor:
        """Mix the task loss with the distillation term on this batch."""
        if batch.outputs is None:
            return loss
        with torch.no_grad():
            t_out = self.teacher(batch.x)
        if t_out.shape != batch.outputs.shape:
            raise ValueError(f"teacher outputs {list(t_out.shape)} but the student {list(batch.outputs.shape)}; "
                             "they must match to distil")
        kd = kd_loss(batch.outputs, t_out, self.temperature)
        self.last = {"task": float(loss.detach()), "kd": float(kd.detach())}
        return (1.0 - self.alpha) * loss + self.alpha * kd

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "temperature": self.temperature}
