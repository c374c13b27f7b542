"""One plain PyTorch training loop with callbacks; every sparse-training method is a callback on it."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from ..datasets import as_dataset  # also importable from here, as before
from ..masks import attached
from .distributed import any_rank, unwrap

log = logging.getLogger(__name__)


class IndexedDataset(Dataset):
    """Wraps a data set so each item is ``(x, y, index)``: callbacks see which examples a batch holds."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, Any, int]:
        x, y = self.base[i]
        return x, y, i


class _IndexedTensorBatches(IndexedDataset):
    """``IndexedDataset`` over a ``TensorDataset`` that fetches a whole batch by one indexing op.

    ``DataLoader`` calls ``__getitems__`` with a batch of indices; the batch comes back already
    stacked, so collating example by example (most of a small model's step time) is skipped.
    """

    def __getitems__(self, indices: list[int]) -> tuple[Any, Any, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        x, y = (t[idx] for t in self.base.tensors)  # type: ignore[attr-defined]
        return x, y, idx


def _stacked(batch: Any) -> Any:
    return batch


def _loader(base: Dataset, batch_size: int, sampler: Sampler | None, gen: torch.Generator) -> DataLoader:
    """The training loader: batched indexing for tensor data, per-example collation otherwise."""
    if isinstance(base, TensorDataset) and len(base.tensors) == 2:
        return DataLoader(_IndexedTensorBatches(base), batch_size=batch_size, shuffle=sampler is None,
                          sampler=sampler, generator=gen, collate_fn=_stacked)
    return DataLoader(IndexedDataset(base), batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                      generator=gen)


@dataclass
class Batch:
    """One training batch as callbacks see it."""

    x: Tensor
    y: Tensor
    index: Tensor  # (B,) positions of the examples in the training set
    outputs: Tensor | None = None  # model outputs (logits)
    loss_per_example: Tensor | None = None  # (B,) before reduction


@dataclass
class TrainState:
    """What callbacks read and change while ``fit`` runs."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    total_steps: int
    steps_per_epoch: int
    device: torch.device
    step: int = 0  # optimizer steps done so far
    epoch: int = 0
    scheduler: Any = None
    history: list[dict[str, float]] = field(default_factory=list)
    stop: bool = False  # a callback sets it to end training early
    extra: dict[str, Any] = field(default_factory=dict)


class Callback:
    """Hooks into ``fit``; override what you need. ``loss`` may add terms (regularizers, distillation)."""

    def on_fit_start(self, state: TrainState) -> None: ...

    def on_epoch_start(self, state: TrainState) -> None: ...

    def on_batch_start(self, state: TrainState, batch: Batch) -> None: ...

    def loss(self, state: TrainState, batch: Batch, loss: Tensor) -> Tensor:
        return loss

    def on_after_backward(self, state: TrainState, batch: Batch) -> None:
        """Gradients are in ``.grad`` (dense for pruned weights only if a callback keeps them)."""

    def on_step_end(self, state: TrainState, batch: Batch) -> None:
        """After ``optimizer.step()``; ``state.step`` already counts this step."""

    def on_epoch_end(self, state: TrainState) -> None: ...

    def on_fit_end(self, state: TrainState) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def make_optimizer(
    name: str | OptimizerFactory, params: Iterable[nn.Parameter], lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    """``"sgd"`` (with momentum, Nesterov off), ``"adamw"``, ``"adam"``, or a factory called on the parameters."""
    if callable(name):
        return name(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd', 'adamw', 'adam' or a callable, got {name!r}")


@dataclass
class FitResult:
    """What ``fit`` returns: the final state and the per-epoch history."""

    state: TrainState
    history: list[dict[str, float]]

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def _move(x: Any, device: torch.device) -> Any:
    return x.to(device, non_blocking=True) if torch.is_tensor(x) else x


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Dataset | tuple[Tensor, Tensor],
    batch_size: int = 512,
    device: str | torch.device | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> dict[str, float]:
    """Accuracy (top-1) and mean loss of a classifier on ``data``."""
    ds = as_dataset(data)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    loss_fn = loss_fn or nn.functional.cross_entropy
    was_training = model.training
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    for x, y in DataLoader(ds, batch_size=batch_size):
        x, y = _move(x, dev), _move(y, dev)
        out = model(x)
        loss_sum += float(loss_fn(out, y)) * len(y)
        correct += int((out.argmax(-1) == y).sum())
        total += len(y)
    model.train(was_training)
    if total == 0:
        raise ValueError("data for evaluation is empty")
    return {"accuracy": correct / total, "loss": loss_sum / total}


def fit(
    model: nn.Module,
    data: Dataset | tuple[Tensor, Tensor],
    *,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int = 128,
    lr: float = 0.1,
    optimizer: str | OptimizerFactory | torch.optim.Optimizer = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    lr_schedule: str = "cosine",
    warmup_steps: int = 0,
    callbacks: Sequence[Callback] = (),
    val_data: Dataset | tuple[Tensor, Tensor] | None = None,
    eval_every_epoch: bool = True,
    sampler: Sampler | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    seed: int | None = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    state: TrainState | None = None,
) -> FitResult:
    """Train ``model`` on ``data`` with callbacks; give ``epochs`` or ``steps`` (optimizer steps).

    ``loss_fn(outputs, y)`` must return one loss per example (``reduction='none'``); the default is
    cross-entropy. ``sampler`` (e.g. a per-epoch random subset, RS2) replaces shuffling; a sampler with
    ``set_epoch`` (``DistributedSampler``) is told each epoch's number before the epoch starts; with
    ``steps`` the loader is cycled until that many steps ran. Pass ``state`` from a checkpoint to
    resume (step, epoch, optimizer and callbacks' state).
    """
    if (epochs is None) == (steps is None):
        raise ValueError("fit needs exactly one of epochs= or steps= (a positive integer)")
    budget = epochs if epochs is not None else steps
    if not isinstance(budget, int) or budget <= 0:
        raise ValueError(f"{'epochs' if epochs is not None else 'steps'} must be a positive integer, got {budget!r}")
    if lr_schedule not in ("cosine", "constant", "step"):
        raise ValueError(f"lr_schedule must be 'cosine', 'constant' or 'step', got {lr_schedule!r}")
    dev = torch.device(device)
    base = as_dataset(data)
    if len(base) == 0:  # type: ignore[arg-type]
        raise ValueError("data for training is empty")
    base_seed = seed if seed is not None else torch.seed()
    gen = torch.Generator()
    if seed is not None:
        torch.manual_seed(seed)
    loader = _loader(base, batch_size, sampler, gen)
    steps_per_epoch = len(loader)
    total = epochs * steps_per_epoch if epochs is not None else int(steps)  # type: ignore[operator]
    model.to(dev).train()
    if state is None:
        opt = optimizer if isinstance(optimizer, torch.optim.Optimizer) else make_optimizer(
            optimizer, model.parameters(), lr, weight_decay, momentum
        )
        state = TrainState(model, opt, total, steps_per_epoch, dev)
    else:
        state.total_steps, state.steps_per_epoch = total, steps_per_epoch
    state.scheduler = _lr_scheduler(state.optimizer, lr_schedule, total, warmup_steps, last_step=state.step)
    loss_fn = loss_fn or (lambda out, y: nn.functional.cross_entropy(out, y, reduction="none"))
    bar = _progress(progress, total, state.step)
    for cb in callbacks:
        cb.on_fit_start(state)
    masks = attached(unwrap(model))  # DDP wraps the module that holds the masks
    if masks is not None:  # fine-tuning a pruned model: pruned weights stay exactly zero
        masks.watch(state.optimizer)
    while state.step < total and not state.stop:
        gen.manual_seed(base_seed + state.epoch)  # the shuffle of each epoch is reproducible, so is a resume
        _set_epoch(sampler, state.epoch)
        _run_epoch(state, loader, callbacks, loss_fn, total, bar)
        record = {"epoch": float(state.epoch), "step": float(state.step), **state.extra.pop("epoch_metrics", {})}
        if val_data is not None and (eval_every_epoch or state.step >= total):
            record.update({f"val_{k}": v for k, v in evaluate(model, val_data, device=dev).items()})
        state.history.append(record)
        log.info("epoch %d: %s", state.epoch, record)
    for cb in callbacks:
        cb.on_fit_end(state)
    if bar is not None:
        bar.stop()
    return FitResult(state, state.history)


def _set_epoch(sampler: Sampler | None, epoch: int) -> None:
    """Tell an epoch-aware sampler (``DistributedSampler``) which epoch starts, so each epoch draws a new order."""
    set_epoch = getattr(sampler, "set_epoch", None)
    if callable(set_epoch):
        set_epoch(epoch)


def _run_epoch(state: TrainState, loader: DataLoader, callbacks: Sequence[Callback], loss_fn, total: int, bar) -> None:
    for cb in callbacks:
        cb.on_epoch_start(state)
    loss_sum, correct, seen = 0.0, 0, 0
    skip = state.step - state.epoch * state.steps_per_epoch  # batches this epoch already ran (resume)
    completed = True
    for i, (x, y, idx) in enumerate(loader):
        if i < skip:
            continue
        if state.step >= total or state.stop:
            completed = False
            break
        batch = Batch(_move(x, state.device), _move(y, state.device), idx)
        for cb in callbacks:
            cb.on_batch_start(state, batch)
        batch.outputs = state.model(batch.x)
        batch.loss_per_example = loss_fn(batch.outputs, batch.y)
        loss = batch.loss_per_example.mean()
        for cb in callbacks:
            loss = cb.loss(state, batch, loss)
        value = float(loss.detach())
        if any_rank(not math.isfinite(value)):  # before backward: the weights are still those of the last step
            raise FloatingPointError(
                f"training diverged: the loss is {value} at step {state.step + 1} (epoch {state.epoch}) on this "
                "rank or another; the model holds the weights of the step before. Lower lr, add warmup_steps or "
                "check the data for NaN/Inf")
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for cb in callbacks:
            cb.on_after_backward(state, batch)
        state.optimizer.step()
        state.scheduler.step()
        state.step += 1
        for cb in callbacks:
            cb.on_step_end(state, batch)
        loss_sum += value * len(batch.y)
        if batch.outputs.dim() == 2 and batch.y.dim() == 1:
            correct += int((batch.outputs.detach().argmax(-1) == batch.y).sum())
        seen += len(batch.y)
        if bar is not None:
            bar.advance(1)
    for cb in callbacks:
        cb.on_epoch_end(state)
    if completed:  # an epoch cut short (stop, or the step budget) resumes where it stopped
        state.epoch += 1
    if seen:
        state.extra["epoch_metrics"] = {"train_loss": loss_sum / seen, "train_accuracy": correct / seen}


def _lr_scheduler(opt: torch.optim.Optimizer, kind: str, total: int, warmup: int, last_step: int):
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        t = (step - warmup) / max(1, total - warmup)
        if kind == "step":  # x0.1 at 50% and 75%
            return 0.1 ** (int(t >= 0.5) + int(t >= 0.75))
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    for g in opt.param_groups:
        g.setdefault("initial_lr", g["lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor, last_epoch=last_step - 1 if last_step else -1)
    return sched


class _Bar:
    def __init__(self, total: int, done: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.p = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                          TimeRemainingColumn(), transient=True)
        self.p.start()
        self.task = self.p.add_task("training", total=total, completed=done)

    def advance(self, n: int) -> None:
        self.p.advance(self.task, n)

    def stop(self) -> None:
        self.p.stop()


def _progress(on: bool, total: int, done: int) -> _Bar | None:
    return _Bar(total, done) if on else None
