"""Training dynamics: one recorder (a ``fit`` callback or ``update`` calls in any loop) keeps per-example stats.

A Hugging Face ``Trainer`` feeds it through ``prunekit.data.hf_trainer.record_trainer`` (extra
``transformers``).

Per example and epoch it records the statistics every dynamics score needs.

Layout on disk (a folder): ``dynamics.f32``, a raw float32 memmap shaped ``(epochs, N, F)`` that grows
one epoch at a time, and ``dynamics.json`` (version, N, field names, epochs done, the epoch being
written). An epoch counts only once all its batches ran and the JSON says so; a run interrupted
mid-epoch and resumed from a checkpoint continues that epoch. Examples not presented in an epoch
(a subset sampler) hold NaN.

Fields (``F = 7``), all from the training forward pass before the optimizer step:

- ``loss``: the per-example training loss.
- ``p_label``: softmax probability of the given label.
- ``margin``: logit margin ``z_y - max_{i != y} z_i`` (Pleiss et al. 2020, Eq. 1; not the softmax margin).
- ``correct``: 1.0 if the argmax equals the label, else 0.0 (Toneva et al. 2019).
- ``el2n``: ``||softmax(z) - onehot(y)||_2`` (Paul et al. 2021, Eq. 2).
- ``entropy``: entropy of ``softmax(z)`` in nats.
- ``prob_margin``: softmax margin ``p_y - max_{i != y} p_i`` (the "accumulated margin" of Zheng et al.
  2023's CCS code, bounded in [-1, 1], unlike the logit margin).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..io import write_json
from ..training.loop import Batch, Callback, TrainState
from .checks import check_positive_int
from .io import MANIFEST_VERSION
from .io import read_versioned_json as read_json

log = logging.getLogger(__name__)

FIELDS = ("loss", "p_label", "margin", "correct", "el2n", "entropy", "prob_margin")
DATA_FILE = "dynamics.f32"
META_FILE = "dynamics.json"


def example_stats(logits: Tensor, y: Tensor, loss: Tensor) -> Tensor:
    """Per-example ``(B, F)`` statistics in ``FIELDS`` order from logits ``(B, C)``, labels and losses ``(B,)``."""
    z = logits.detach().float()  # (B, C)
    logp = torch.log_softmax(z, dim=-1)
    p = logp.exp()
    p_y = p.gather(1, y[:, None]).squeeze(1)  # (B,)
    z_y = z.gather(1, y[:, None]).squeeze(1)
    z_other = z.scatter(1, y[:, None], float("-inf")).amax(1)  # largest logit of another class
    p_other = p.scatter(1, y[:, None], float("-inf")).amax(1)  # largest probability of another class
    onehot = torch.nn.functional.one_hot(y, z.shape[1]).float()
    el2n = (p - onehot).norm(dim=1)
    entropy = -(p * logp).nan_to_num(0.0).sum(1)
    correct = (z.argmax(1) == y).float()
    return torch.stack([loss.detach().float(), p_y, z_y - z_other, correct, el2n, entropy, p_y - p_other], dim=1)


class Dynamics:
    """Read-only view of a recorded run: ``field(name) -> (epochs, N)`` float32, read in chunks."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        meta = read_json(self.path / META_FILE, name="dynamics metadata")
        self.num_examples = int(meta["num_examples"])
        self.fields = tuple(meta["fields"])
        self.epochs = int(meta["epochs_done"])
        self.meta = meta

    def __repr__(self) -> str:
        return f"Dynamics({str(self.path)!r}, N={self.num_examples}, epochs={self.epochs})"

    def field(self, name: str, epochs: int | Sequence[int] | slice | None = None) -> np.ndarray:
        """Values of ``name`` for the chosen epochs (negative counts from the end) as ``(E, N)``."""
        if name not in self.fields:
            raise ValueError(f"field must be one of {', '.join(self.fields)}, got {name!r}")
        sel = self._epochs(epochs)
        mm = self._map()
        out = np.asarray(mm[sel, :, self.fields.index(name)], dtype=np.float32)  # (E, N)
        del mm
        return out

    def _epochs(self, epochs: int | Sequence[int] | slice | None) -> list[int]:
        all_e = list(range(self.epochs))
        if epochs is None:
            sel = all_e
        elif isinstance(epochs, slice):
            sel = all_e[epochs]
        else:
            wanted = [epochs] if isinstance(epochs, (int, np.integer)) else list(epochs)
            for e in wanted:
                if not -self.epochs <= int(e) < self.epochs:
                    raise ValueError(f"epoch {e} is out of range: {self.path} recorded {self.epochs} epochs "
                                     f"(accepted: 0..{self.epochs - 1} or negative from the end)")
            sel = [all_e[int(e)] for e in wanted]
        if not sel:
            raise ValueError(f"no epochs selected: {self.path} recorded {self.epochs} epochs")
        return sel

    def _map(self) -> np.memmap:
        shape = (self.epochs, self.num_examples, len(self.fields))
        return np.memmap(self.path / DATA_FILE, dtype=np.float32, mode="r", shape=shape)


class DynamicsRecorder(Callback):
    """Records ``FIELDS`` per example and epoch into a memmap, from ``fit`` (a callback) or any loop.

    Semantics (both ways): one row per training batch, from the logits of the training forward pass
    before the optimizer step (no extra eval pass); an example's row for an epoch is its last batch
    in that epoch. Your own loop::

        rec = DynamicsRecorder("dyn/", num_examples=len(train))
        for e in range(epochs):
            with rec.epoch():                      # or rec.start_epoch() ... rec.end_epoch()
                for x, y, idx in loader:           # idx: the rows' positions in the training set
                    logits = model(x)
                    rec.update(idx, logits, y)     # loss defaults to per-example cross-entropy
                    ...backward, step...

    As a ``fit`` callback it calls the same ``start_epoch`` / ``update`` / ``end_epoch``. Memory is
    bounded by one epoch slice (``N * F`` floats, mapped, not held). The folder resumes: a fresh ``fit``
    appends after the epochs already recorded; a ``fit`` resumed from a checkpoint (``state.step > 0``)
    continues its epochs, and an epoch resumed mid-way keeps the rows recorded before the
    interruption. An epoch counts once all its batches ran (``end_epoch(complete=True)``).
    """

    def __init__(self, path: str | os.PathLike, num_examples: int, resume: bool = True) -> None:
        self.path = Path(path)
        self.num_examples = check_positive_int(num_examples, "num_examples")
        self.epochs_done = 0
        self.open_epoch: int | None = None  # slot written to but not finished
        self._offset: int | None = None  # slot = offset + state.epoch during one fit
        self._slot: int | None = None  # the epoch slot mapped now
        self._mm: np.memmap | None = None
        meta_path = self.path / META_FILE
        if meta_path.exists():
            if not resume:
                raise ValueError(f"{str(self.path)!r} already holds recorded dynamics; pass resume=True or a new path")
            meta = read_json(meta_path, name="dynamics metadata")
            if meta["num_examples"] != self.num_examples or tuple(meta["fields"]) != FIELDS:
                raise ValueError(f"{str(self.path)!r} records {meta['num_examples']} examples with fields "
                                 f"{meta['fields']}, not {self.num_examples} with {list(FIELDS)}")
            self.epochs_done = int(meta["epochs_done"])
            self.open_epoch = meta.get("open_epoch")

    # -- the API for any loop ---------------------------------------------------------------------

    @property
    def current_epoch(self) -> int | None:
        """The epoch slot open for ``update`` now, or ``None`` between epochs."""
        return self._slot if self._mm is not None else None

    def start_epoch(self, epoch: int | None = None, keep_rows: bool = False) -> int:
        """Open epoch slot ``epoch`` (default: the next, ``epochs_done``) for ``update``; return it.

        ``epoch`` may be at most ``epochs_done`` (re-recording an earlier epoch drops the later ones at
        ``end_epoch``). Its rows start as NaN unless ``keep_rows`` and it is the epoch left open
        by an interrupted run (then the rows recorded before the interruption stay).
        """
        e = self.epochs_done if epoch is None else epoch
        if isinstance(e, bool) or not isinstance(e, (int, np.integer)) or not 0 <= int(e) <= self.epochs_done:
            raise ValueError(f"epoch must be an integer in 0..{self.epochs_done} (the epochs recorded so far, "
                             f"or the next), got {epoch!r}")
        if self._mm is not None:
            raise ValueError(f"epoch {self._slot} is still open; call end_epoch() before start_epoch()")
        self._open_slot(int(e), clear=not (keep_rows and self.open_epoch == int(e)))
        self._slot = int(e)
        return int(e)

    def update(self, indices: Tensor | np.ndarray | Sequence[int], logits: Tensor, targets: Tensor,
               loss: Tensor | None = None) -> None:
        """Record one batch: ``indices`` (B,) dataset positions, ``logits`` (B, C), ``targets`` (B,) labels.

        ``loss`` (B,) is the per-example training loss; the default is cross-entropy of ``logits``
        (what ``fit`` uses). Call between ``start_epoch`` and ``end_epoch``, before the optimizer step.
        """
        if self._mm is None:
            raise ValueError("no epoch is open; wrap the epoch in `with recorder.epoch():` or call start_epoch()")
        idx, y = self._check_batch(indices, logits, targets, loss)
        if loss is None:
            loss = torch.nn.functional.cross_entropy(logits.detach().float(), y, reduction="none")
        self._mm[0, idx, :] = example_stats(logits, y, loss).cpu().numpy()

    def end_epoch(self, complete: bool = True) -> None:
        """Flush the open epoch; count it as recorded if ``complete`` (else it stays open, to resume)."""
        if self._mm is None:
            raise ValueError("no epoch is open; call start_epoch() first")
        self._mm.flush()
        self._mm = None
        if complete:
            self.epochs_done = self._slot + 1  # type: ignore[operator]
            self.open_epoch = None
        self._slot = None
        self._write_meta()

    @contextmanager
    def epoch(self, epoch: int | None = None) -> Iterator[int]:
        """``with recorder.epoch():`` opens the next epoch and counts it on a normal exit (not on an error)."""
        slot = self.start_epoch(epoch)
        try:
            yield slot
        except BaseException:
            self.end_epoch(complete=False)
            raise
        self.end_epoch(complete=True)

    def _check_batch(self, indices: Any, logits: Tensor, targets: Tensor,
                     loss: Tensor | None) -> tuple[np.ndarray, Tensor]:
        """Validated ``(indices as int64 numpy, targets as long tensor)`` or a ``ValueError`` naming the argument."""
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            raise ValueError(f"logits must be classifier logits shaped (B, C), got "
                             f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}")
        b = logits.shape[0]
        y = torch.as_tensor(targets, device=logits.device)
        if y.shape != (b,) or y.dtype.is_floating_point:
            raise ValueError(f"targets must be integer labels shaped ({b},) to match logits, got "
                             f"{tuple(y.shape)} {y.dtype}")
        idx = (indices.detach().cpu().numpy() if isinstance(indices, Tensor) else np.asarray(indices))
        if idx.shape != (b,) or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"indices must be integer dataset positions shaped ({b},) to match logits, got "
                             f"{idx.shape} {idx.dtype}")
        if b and (idx.min() < 0 or idx.max() >= self.num_examples):
            raise ValueError(f"indices must be in 0..{self.num_examples - 1} (num_examples={self.num_examples}), "
                             f"got values in {int(idx.min())}..{int(idx.max())}")
        if loss is not None and tuple(loss.shape) != (b,):
            raise ValueError(f"loss must be one value per example shaped ({b},), got {tuple(loss.shape)}")
        return idx.astype(np.int64, copy=False), y.long()

    # -- the fit callback: the same calls -----------------------------------------------------------

    def on_fit_start(self, state: TrainState) -> None:
        self._offset = self.epochs_done - state.epoch

    def on_epoch_start(self, state: TrainState) -> None:
        if self._offset is None:
            self.on_fit_start(state)
        mid_epoch = state.step > state.epoch * state.steps_per_epoch
        self.start_epoch(self._offset + state.epoch, keep_rows=mid_epoch)  # type: ignore[operator]

    def on_step_end(self, state: TrainState, batch: Batch) -> None:
        if batch.outputs is None or batch.loss_per_example is None:
            return
        if self._mm is None:
            self.on_epoch_start(state)
        self.update(batch.index, batch.outputs, batch.y, loss=batch.loss_per_example)

    def on_epoch_end(self, state: TrainState) -> None:
        if self._mm is None:
            return
        self.end_epoch(complete=state.step >= (state.epoch + 1) * state.steps_per_epoch)  # every batch ran

    def on_fit_end(self, state: TrainState) -> None:
        self._mm = None
        self._slot = None
        self._offset = None

    def dynamics(self) -> Dynamics:
        """The recorded epochs so far as a read-only ``Dynamics``."""
        return Dynamics(self.path)

    def state_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "epochs_done": self.epochs_done, "open_epoch": self.open_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs_done = int(state["epochs_done"])
        self.open_epoch = state.get("open_epoch")
        self._write_meta()

    def _open_slot(self, epoch: int, clear: bool = True) -> None:
        """Grow the file to hold ``epoch`` and map that epoch's ``(N, F)`` slice (NaN-filled if ``clear``)."""
        self.path.mkdir(parents=True, exist_ok=True)
        slot = self.num_examples * len(FIELDS) * 4
        data = self.path / DATA_FILE
        with open(data, "ab") as f:
            if f.tell() < (epoch + 1) * slot:
                f.truncate((epoch + 1) * slot)
        self._mm = np.memmap(data, dtype=np.float32, mode="r+", offset=epoch * slot,
                             shape=(1, self.num_examples, len(FIELDS)))
        if clear:
            self._mm[:] = np.nan
            self._mm.flush()
        self.open_epoch = epoch
        self._write_meta()

    def _write_meta(self) -> None:
        write_json(self.path / META_FILE, {"version": MANIFEST_VERSION, "kind": "training-dynamics",
                                           "num_examples": self.num_examples, "fields": list(FIELDS),
                                           "epochs_done": self.epochs_done, "open_epoch": self.open_epoch,
                                           "dtype": "float32", "layout": "(epochs, num_examples, fields)"})


def as_runs(dynamics: Dynamics | str | os.PathLike | Sequence[Dynamics | str | os.PathLike]) -> list[Dynamics]:
    """One or several recorded runs (objects or folders) as a list of ``Dynamics`` of equal size."""
    items = [dynamics] if isinstance(dynamics, (Dynamics, str, os.PathLike)) else list(dynamics)
    if not items:
        raise ValueError("dynamics must name at least one recorded run")
    runs = [d if isinstance(d, Dynamics) else Dynamics(d) for d in items]
    sizes = {r.num_examples for r in runs}
    if len(sizes) != 1:
        raise ValueError(f"recorded runs cover different data set sizes {sorted(sizes)}; they must match")
    for r in runs:
        if r.epochs == 0:
            raise ValueError(f"{r.path} has no finished epoch recorded")
    return runs
