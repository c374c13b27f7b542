"""Training dynamics: one callback records per example and epoch the statistics every dynamics score needs.

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
from collections.abc import Sequence
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
    """Callback on ``prunekit.training.fit`` recording ``FIELDS`` per example and epoch into a memmap.

    Memory is bounded by one epoch slice (``N * F`` floats, mapped, not held). The folder resumes:
    a fresh ``fit`` appends after the epochs already recorded; a ``fit`` resumed from a checkpoint
    (``state.step > 0``) continues its epochs, and an epoch resumed mid-way keeps the rows recorded
    before the interruption. An epoch counts once all its batches ran. Needs a classifier (logits
    ``(B, C)``) and ``Batch.index`` (given by ``fit``).
    """

    def __init__(self, path: str | os.PathLike, num_examples: int, resume: bool = True) -> None:
        self.path = Path(path)
        self.num_examples = check_positive_int(num_examples, "num_examples")
        self.epochs_done = 0
        self.open_epoch: int | None = None  # slot written to but not finished
        self._offset: int | None = None  # slot = offset + state.epoch during one fit
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

    def on_fit_start(self, state: TrainState) -> None:
        self._offset = self.epochs_done - state.epoch

    def on_epoch_start(self, state: TrainState) -> None:
        if self._offset is None:
            self.on_fit_start(state)
        slot = self._offset + state.epoch  # type: ignore[operator]
        mid_epoch = state.step > state.epoch * state.steps_per_epoch
        self._open_slot(slot, clear=not (mid_epoch and self.open_epoch == slot))

    def on_step_end(self, state: TrainState, batch: Batch) -> None:
        if batch.outputs is None or batch.loss_per_example is None:
            return
        if batch.outputs.dim() != 2:
            raise ValueError(f"DynamicsRecorder needs classifier logits (B, C), got shape {tuple(batch.outputs.shape)}")
        if self._mm is None:
            self.on_epoch_start(state)
        stats = example_stats(batch.outputs, batch.y, batch.loss_per_example).cpu().numpy()
        idx = batch.index.cpu().numpy()
        self._mm[0, idx, :] = stats  # type: ignore[index]

    def on_epoch_end(self, state: TrainState) -> None:
        if self._mm is None:
            return
        self._mm.flush()
        self._mm = None
        if state.step >= (state.epoch + 1) * state.steps_per_epoch:  # every batch of the epoch ran
            self.epochs_done = self._offset + state.epoch + 1  # type: ignore[operator]
            self.open_epoch = None
        self._write_meta()

    def on_fit_end(self, state: TrainState) -> None:
        self._mm = None
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
