"""Example scores. Every data score is a *difficulty*: higher = harder / more informative example.

Dynamics scores (``el2n``, ``forgetting``, ``aum``, ``entropy``, ``loss``) are derived from runs recorded by
``DynamicsRecorder``, several runs (seeds) averaged; ``grand`` needs models and data; ``prototype``
(self-supervised prototypes) needs embeddings; ``random`` needs only the data set size. The direction
of selection is a separate, named rule (``keep-hard`` / ``keep-easy``), never a sign flip here, except
where a paper's quantity is "higher = easier" (AUM): its score is documented as the negated quantity.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..errors import check_choice, check_fraction
from ..registry import METHODS
from ..training.loop import as_dataset
from .checks import check_positive_int
from .dynamics import Dynamics, as_runs

log = logging.getLogger(__name__)

DATA_SCORES = METHODS.view("data-score")  # kind "data-score" of METHODS
DYNAMICS_SCORES = ("el2n", "forgetting", "aum", "prob-aum", "entropy", "loss")

RunsArg = Dynamics | str | os.PathLike | Sequence[Dynamics | str | os.PathLike]


# ---------------------------------------------------------------- pure math on (epochs, N) arrays
def forgetting_events(correct: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forgetting events, "ever learned" and presentations from per-epoch correctness ``(N,)`` (NaN = unseen).

    A forgetting event is a presentation where the example goes from correct to wrong
    (Toneva et al. 2019, Sec. 2: ``acc_i^t > acc_i^{t+1}``); unseen epochs are skipped.
    """
    events = learned = seen_count = last = None
    for a in correct:  # a: (N,)
        if events is None:
            events, seen_count = np.zeros(a.shape, np.int64), np.zeros(a.shape, np.int64)
            learned, last = np.zeros(a.shape, bool), np.full(a.shape, np.nan, np.float32)
        seen = ~np.isnan(a)
        events += seen & (last == 1) & (a == 0)
        learned |= seen & (a == 1)
        seen_count += seen
        last = np.where(seen, a, last)
    if events is None:
        raise ValueError("correct must hold at least one epoch")
    return events, learned, seen_count


def nan_mean_epochs(arrays: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Streaming mean over epochs of ``(N,)`` arrays ignoring NaN; returns ``(sum, count)``."""
    total = count = None
    for a in arrays:
        if total is None:
            total, count = np.zeros(a.shape, np.float64), np.zeros(a.shape, np.int64)
        ok = ~np.isnan(a)
        total += np.where(ok, a, 0.0)
        count += ok
    if total is None:
        raise ValueError("no epochs to average")
    return total, count


# ---------------------------------------------------------------- helpers over recorded runs
def _epoch_list(run: Dynamics, epochs: int | Sequence[int] | slice | None) -> list[int]:
    return run._epochs(epochs)


def _mean_field(runs: RunsArg, field: str, epochs: int | Sequence[int] | slice | None) -> Tensor:
    """Mean of ``field`` over the chosen epochs and over runs, per example; unseen examples are an error."""
    rs = as_runs(runs)
    total = np.zeros(rs[0].num_examples)
    count = np.zeros(rs[0].num_examples, np.int64)
    for r in rs:
        s, c = nan_mean_epochs(r.field(field, e)[0] for e in _epoch_list(r, epochs))
        total += s
        count += c
    missing = np.flatnonzero(count == 0)
    if missing.size:
        raise ValueError(f"{missing.size} examples were never presented in the chosen epochs "
                         f"(e.g. {missing[:5].tolist()}); choose epochs in which every example was seen")
    return torch.from_numpy(total / count)


# ---------------------------------------------------------------- the "early epoch" of EL2N
# Fraction of the final training accuracy at which ``epoch="auto"`` reads EL2N. Fixed from the argument
# in ``learned_epoch``'s docstring before any benchmark used it; not tuned on AUROC or test accuracy.
EL2N_AUTO_FRACTION = 0.9


def first_epoch_reaching(curve: np.ndarray, fraction: float) -> int:
    """First index ``t`` with ``curve[t] >= fraction * curve[-1]`` (``curve``: one value per epoch)."""
    c = np.asarray(curve, dtype=np.float64)
    if c.ndim != 1 or c.size == 0 or not np.isfinite(c).all():
        raise ValueError(f"curve must be a non-empty 1-D array of finite values, got {c.tolist()!r}")
    return int(np.flatnonzero(c >= fraction * c[-1] - 1e-12)[0])


def training_accuracy(dynamics: RunsArg) -> np.ndarray:
    """Mean training accuracy per epoch ``(E,)`` from the recorder's ``correct`` field, averaged over runs.

    Examples not presented in an epoch (NaN) are left out of that epoch's mean; ``E`` is the number of
    epochs every run recorded.
    """
    rs = as_runs(dynamics)
    e = min(r.epochs for r in rs)
    acc = np.zeros(e)
    for r in rs:
        for t in range(e):
            c = r.field("correct", t)[0]  # (N,)
            acc[t] += float(np.nanmean(c)) if np.isfinite(c).any() else 0.0
    return acc / len(rs)


def learned_epoch(dynamics: RunsArg, fraction: float = EL2N_AUTO_FRACTION) -> int:
    """The early epoch for EL2N: first epoch whose mean training accuracy reaches ``fraction`` of the final one.

    Paul et al. 2021 (Sec. 3-4) score "early in training" (epoch 20 of 200 on CIFAR-10), once the
    network has learned the easy examples and before it fits the rest; a fixed share of the epochs
    means very different amounts of learning on different data, model and step counts. This rule reads
    that state from the proxies' training curve (``training_accuracy``) instead. The default
    ``fraction = 0.9`` says: the proxies already classify 90% of what they classify at the end, so the
    easy majority is learned, while what they only get in the last tenth of their learning (the rare,
    atypical or mislabeled tail that EL2N should rank high) is not yet. It was fixed from this argument,
    not tuned on a downstream metric (noise AUROC, test accuracy). Returns a 0-based epoch.
    """
    f = check_fraction(fraction, "fraction")
    return first_epoch_reaching(training_accuracy(dynamics), f)


# ---------------------------------------------------------------- dynamics scores
@DATA_SCORES.register("el2n")
def el2n(dynamics: RunsArg, epoch: int | str = "auto", fraction: float = EL2N_AUTO_FRACTION) -> Tensor:
    """EL2N: ``||softmax(f(x)) - onehot(y)||_2`` at an early ``epoch``, averaged over runs (Paul et al. 2021, Eq. 2).

    ``epoch``: a 0-based epoch, or ``"auto"`` for ``learned_epoch(dynamics, fraction)`` (the first
    epoch at which the runs' mean training accuracy reaches ``fraction`` of its final value).
    """
    if isinstance(epoch, str):
        if epoch != "auto":
            raise ValueError(f"epoch must be a 0-based epoch (int) or 'auto', got {epoch!r}")
        epoch = learned_epoch(dynamics, fraction)
        log.info("el2n: epoch='auto' picked epoch %d (training accuracy >= %.2f of its final value)", epoch, fraction)
    elif isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)):
        raise ValueError(f"epoch must be a 0-based epoch (int) or 'auto', got {epoch!r}")
    return _mean_field(dynamics, "el2n", int(epoch))


@DATA_SCORES.register("loss")
def loss(dynamics: RunsArg, epochs: int | Sequence[int] | slice | None = None) -> Tensor:
    """Training loss averaged over ``epochs`` (all by default) and runs."""
    return _mean_field(dynamics, "loss", epochs)


@DATA_SCORES.register("entropy")
def entropy(dynamics: RunsArg, epochs: int | Sequence[int] | slice | None = -1) -> Tensor:
    """Predictive entropy ``-sum_c p_c log p_c`` (uncertainty; Coleman et al. 2020), last epoch by default."""
    return _mean_field(dynamics, "entropy", epochs)


def area_under_margin(dynamics: RunsArg, epochs: int | Sequence[int] | slice | None = None) -> Tensor:
    """AUM: mean over epochs of the logit margin ``z_y - max_{i != y} z_i`` (Pleiss et al. 2020, Eq. 1-2).

    Low AUM marks likely mislabeled examples. This is the paper's quantity (higher = easier).
    """
    return _mean_field(dynamics, "margin", epochs)


@DATA_SCORES.register("aum")
def aum(dynamics: RunsArg, epochs: int | Sequence[int] | slice | None = None) -> Tensor:
    """Difficulty from AUM: ``-AUM`` (Pleiss et al. 2020, Eq. 2), so mislabeled-looking examples score high."""
    return -area_under_margin(dynamics, epochs)


@DATA_SCORES.register("prob-aum")
def prob_aum(dynamics: RunsArg, epochs: int | Sequence[int] | slice | None = None) -> Tensor:
    """Difficulty from the softmax margin ``p_y - max_{i != y} p_i`` averaged over epochs, negated.

    The "accumulated margin" that Zheng et al. 2023 (CCS) stratify and cut on; bounded, so equal-width
    strata over it are not stretched by a few very large logit margins.
    """
    return -_mean_field(dynamics, "prob_margin", epochs)


@DATA_SCORES.register("forgetting")
def forgetting(dynamics: RunsArg) -> Tensor:
    """Forgetting events summed over runs (Toneva et al. 2019); never-learned examples get the most.

    An example never classified correctly in any run scores the total number of recorded epochs,
    above any reachable count (events <= presentations / 2), as Toneva et al. rank them first.
    """
    rs = as_runs(dynamics)
    total = np.zeros(rs[0].num_examples, np.float64)
    learned = np.zeros(rs[0].num_examples, bool)
    for r in rs:
        ev, lr, _ = forgetting_events(r.field("correct", e)[0] for e in range(r.epochs))
        total += ev
        learned |= lr
    total[~learned] = float(sum(r.epochs for r in rs))
    return torch.from_numpy(total)


# ---------------------------------------------------------------- GraNd (torch.func)
def per_example_grad_norm(model: nn.Module, x: Tensor, y: Tensor,
                          loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
    """``||grad_w loss(f_w(x_i), y_i)||_2`` over all trainable parameters for each example ``(B,)``, batched."""
    from torch.func import functional_call, grad, vmap

    loss_fn = loss_fn or (lambda out, t: nn.functional.cross_entropy(out, t, reduction="sum"))
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def one(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        """Loss of one example as a function of the parameters."""
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0)).sum()

    g = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)  # name -> (B, *param.shape)
    sq = sum(gi.flatten(1).pow(2).sum(1) for gi in g.values())  # (B,)
    return sq.sqrt()


@DATA_SCORES.register("grand")
def grand(models: nn.Module | Sequence[nn.Module], data: Any, batch_size: int = 256,
          device: str | torch.device = "cpu", backend: str = "local", concurrency: int | None = None) -> Tensor:
    """GraNd: expected per-example gradient norm over models (e.g. seeds at init) (Paul et al. 2021, Eq. 1).

    Models are evaluated in ``eval()`` mode (batch-norm uses running statistics), as per-example
    gradients need each example's output to depend on that example alone. ``backend="ray"`` scores
    batches of rows on Ray Data tasks (extra ``ray``; the models travel with the task), with the same
    values as ``"local"``.
    """
    ms = [models] if isinstance(models, nn.Module) else list(models)
    if not ms or not all(isinstance(m, nn.Module) for m in ms):
        raise TypeError("models must be an nn.Module or a non-empty list of them")
    check_positive_int(batch_size, "batch_size")
    check_choice(backend, "backend", ("local", "ray"))
    ds = as_dataset(data)
    if backend == "ray":
        return _grand_ray(ms, ds, batch_size, concurrency)
    norms, parts = _GradNorms(ms, device), []
    for x, y in DataLoader(ds, batch_size=batch_size):
        parts.append(norms.batch(x, y))
    return torch.cat(parts) / len(ms) if parts else torch.zeros(0, dtype=torch.float64)


class _GradNorms:
    """Per-example gradient norms summed over models, for a batch (picklable: a Ray task body)."""

    def __init__(self, ms: list[nn.Module], device: str | torch.device = "cpu", shape: tuple[int, ...] = ()) -> None:
        self.ms, self.device, self.shape = ms, device, shape

    def batch(self, x: Tensor, y: Tensor) -> Tensor:
        total = torch.zeros(len(y), dtype=torch.float64)
        for m in self.ms:
            was = m.training
            m.eval().to(self.device)
            total += per_example_grad_norm(m, x.to(self.device), y.to(self.device)).double().cpu()
            m.train(was)
        return total

    def __call__(self, rows: Any) -> dict[str, Any]:
        """Rows of ``[flattened x, label]`` (float32) -> ``{"out": summed norms}``."""
        r = torch.from_numpy(np.array(rows, dtype=np.float32))  # a writable copy of the batch
        x, y = r[:, :-1].reshape(len(r), *self.shape), r[:, -1].round().long()
        return {"out": self.batch(x, y).numpy()}


def _grand_ray(ms: list[nn.Module], ds: Any, batch_size: int, concurrency: int | None) -> Tensor:
    from .ray_backend import map_rows

    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    x = torch.stack([torch.as_tensor(v) for v in xs]).float()
    y = torch.as_tensor([int(v) for v in ys])
    if len(y) and int(y.abs().max()) >= 2**24:
        raise ValueError("labels must be below 2**24 to travel as float32 rows to the Ray backend")
    rows = torch.cat([x.reshape(len(x), -1), y[:, None].float()], 1).numpy()
    total = torch.zeros(len(y), dtype=torch.float64)
    for res in map_rows(_GradNorms(ms, "cpu", tuple(x.shape[1:])), rows, batch_size=batch_size,
                        concurrency=concurrency, actors=True):  # models ship once per actor
        total[torch.from_numpy(np.array(res["id"]))] = torch.from_numpy(np.array(res["out"], dtype=np.float64))
    return total / len(ms)


# ---------------------------------------------------------------- random
@DATA_SCORES.register("random-score", aliases=("random",))
def random(num_examples: int, seed: int = 0) -> Tensor:
    """Uniform random scores in [0, 1) from ``seed`` (the random-pruning baseline)."""
    n = check_positive_int(num_examples, "num_examples")
    return torch.rand(n, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)


def compute(name: str, source: Any, **params: Any) -> Tensor:
    """Run the data score ``name`` on ``source`` (runs, models + data, embeddings, or N) with ``params``."""
    fn = DATA_SCORES.get(name)
    return fn(source, **params)
