"""Backdoor metrics: clean accuracy, attack success rate (ASR), robust accuracy (RA)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .poison import Trigger


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 1024) -> Tensor:
    """``(B,)`` top-1 predictions of ``model`` in eval mode (its training mode is restored)."""
    was = model.training
    model.eval()
    out = torch.cat([model(x[i:i + batch_size]).argmax(-1) for i in range(0, len(x), batch_size)])
    model.train(was)
    return out


def _fraction(hits: Tensor) -> float:
    """``sum / count`` of a bool tensor, computed exactly (in Python, not float32)."""
    return int(hits.sum()) / hits.numel()


def clean_accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Fraction of clean inputs predicted as their label."""
    return _fraction(predict(model, x) == y)


def _others(y: Tensor, target: int) -> Tensor:
    keep = y != target
    if not bool(keep.any()):
        raise ValueError(f"every test input is of the target class {target}: ASR and RA are undefined")
    return keep


def attack_success_rate(model: nn.Module, x: Tensor, y: Tensor, trigger: Trigger, target: int) -> float:
    """ASR: fraction of triggered test inputs whose true class is not ``target`` predicted as ``target``."""
    keep = _others(y, target)
    return _fraction(predict(model, trigger.apply(x[keep])) == target)


def robust_accuracy(model: nn.Module, x: Tensor, y: Tensor, trigger: Trigger, target: int) -> float:
    """RA: fraction of the same triggered inputs (true class not ``target``) predicted as their true class."""
    keep = _others(y, target)
    return _fraction(predict(model, trigger.apply(x[keep])) == y[keep])


def backdoor_metrics(model: nn.Module, x: Tensor, y: Tensor, trigger: Trigger, target: int) -> dict[str, float]:
    """``{"clean_acc", "asr", "ra"}`` of ``model`` on the test set ``(x, y)``, all fractions."""
    return {"clean_acc": clean_accuracy(model, x, y), "asr": attack_success_rate(model, x, y, trigger, target),
            "ra": robust_accuracy(model, x, y, trigger, target)}
