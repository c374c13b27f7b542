"""The recovery training loop: AdamW on random windows of a token stream, LM or distillation loss."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .config import Recovery

log = logging.getLogger(__name__)
Loss = Callable[[nn.Module, Tensor], Tensor]


def lm_loss(model: nn.Module, ids: Tensor) -> Tensor:
    """Mean next-token cross-entropy of ``ids`` ``(B, L)``."""
    logits = model(input_ids=ids).logits.float()  # (B, L, V)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def kd_loss(teacher: nn.Module, temperature: float) -> Loss:
    """Distillation (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network", Eq. 2):
    ``T^2 * KL(softmax(z_t / T) || softmax(z_s / T))`` per token, averaged."""
    teacher.eval()

    def loss(model: nn.Module, ids: Tensor) -> Tensor:
        with torch.no_grad():
            zt = teacher(input_ids=ids).logits.float()  # (B, L, V)
        zs = model(input_ids=ids).logits.float()
        v = zs.shape[-1]
        kl = F.kl_div(F.log_softmax(zs / temperature, -1).reshape(-1, v),
                      F.log_softmax(zt / temperature, -1).reshape(-1, v), log_target=True, reduction="batchmean")
        return kl * temperature**2

    return loss


def lr_at(step: int, steps: int, peak: float) -> float:
    """Linear warmup over the first 5% of the steps, then cosine decay to 10% of ``peak``."""
    warm = max(1, steps // 20)
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def batch_at(stream: Tensor, cfg: Recovery, gen: torch.Generator) -> Tensor:
    """``(batch_size, seq_len)`` windows starting at uniformly drawn positions of ``stream``."""
    starts = torch.randint(0, stream.numel() - cfg.seq_len, (cfg.batch_size,), generator=gen)
    return torch.stack([stream[s : s + cfg.seq_len] for s in starts.tolist()])


def train(model: nn.Module, params: list[nn.Parameter], stream: Tensor, cfg: Recovery, loss_fn: Loss,
          after_step: Callable[[], None] | None = None,
          progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Run ``cfg.steps`` AdamW steps on ``params``; returns steps done, seconds, first/last losses."""
    if stream.numel() <= cfg.seq_len:
        raise ValueError(f"the training text has {stream.numel()} tokens, not more than seq_len={cfg.seq_len}")
    if not params:
        raise ValueError("recovery has no trainable parameter (the model has no bias / norm to train?)")
    dev = next(model.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate(), weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    model.train()
    t0, c0, losses, step, stopped = time.perf_counter(), time.process_time(), [], 0, False
    for step in range(cfg.steps):
        if cfg.max_minutes is not None and time.perf_counter() - t0 > cfg.max_minutes * 60:
            stopped = True
            log.warning("recovery stopped at step %d of %d (max_minutes=%s)", step, cfg.steps, cfg.max_minutes)
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.steps, cfg.learning_rate())
        loss = loss_fn(model, batch_at(stream, cfg, gen).to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if after_step is not None:
            after_step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress("recover", step + 1, cfg.steps)
    else:
        step = cfg.steps
    model.eval()
    head, tail = losses[:10], losses[-10:]
    return {"steps_done": step, "stopped_early": stopped, "train_seconds": time.perf_counter() - t0,
            "train_cpu_seconds": time.process_time() - c0, "threads": torch.get_num_threads(),
            "first_loss": sum(head) / max(1, len(head)), "last_loss": sum(tail) / max(1, len(tail))}
