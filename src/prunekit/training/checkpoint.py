"""Checkpoints of sparse training: model, masks, optimizer and callbacks' state, without pickle.

A checkpoint is a folder saved into repeatedly: ``tensors-<step>.safetensors`` holds every tensor
(weights and buffers, masks, optimizer state such as momentum and Adam moments, callbacks' tensors
such as SR-STE's dense weights or SET's generator state) and ``manifest.json`` (prunekit format 2,
kind ``training-state``) holds everything else (step, epoch, history, optimizer hyper-parameters,
callbacks' scalars) and names the tensor file. The manifest is written last, atomically, and the
previous tensor file is deleted only after it: a crash leaves the previous checkpoint readable,
never a half-written one. Folders of the version-1 layout (``checkpoint.json``) still load.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..io import (
    MANIFEST,
    OutputError,
    check_tensor_file,
    check_writable,
    load_tensors,
    read_manifest,
    remove_owned,
    save_tensors,
    write_manifest,
)
from ..masks import attach, attached
from .distributed import rank, unwrap
from .loop import Batch, Callback, TrainState

log = logging.getLogger(__name__)

KIND = "training-state"
INDEX = MANIFEST  # the commit point of a save
LEGACY_INDEX = "checkpoint.json"  # version 1
TENSORS = re.compile(r"^tensors-\d{9}\.safetensors$")


def _encode(obj: Any, key: str, tensors: dict[str, Tensor]) -> Any:
    """JSON-able form of ``obj``; tensors go to ``tensors`` under ``key`` and leave a reference."""
    if torch.is_tensor(obj):
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _encode(v, f"{key}/{k}", tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, f"{key}/k{i}", tensors), _encode(v, f"{key}/{i}", tensors)]
                              for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint entry {key!r} is a {type(obj).__name__}: only tensors, numbers, strings, "
                    "lists, tuples and dicts can be saved (prunekit never pickles)")


def _decode(obj: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of ``_encode``."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            if obj["__tensor__"] not in tensors:
                raise ValueError(f"checkpoint tensor {obj['__tensor__']!r} is missing from the tensor file")
            return tensors[obj["__tensor__"]]
        if "__items__" in obj:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        return {k: _decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj


def _unshared(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Clone tensors that share storage with an earlier one (tied weights): safetensors refuses shared memory."""
    seen: set[tuple[int, str]] = set()
    out = {}
    for k, v in tensors.items():
        ptr = (v.untyped_storage().data_ptr(), str(v.device)) if v.numel() else (id(v), "empty")
        out[k] = v.detach().clone() if ptr in seen else v
        seen.add(ptr)
    return out


def check_folder(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Raise unless ``path`` can hold training state: absent, empty, or a training-state folder already.

    A non-empty folder holding anything else is refused unless ``overwrite`` (prunekit then adds its
    files beside the others and never deletes what it did not write).
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"checkpoint path {folder} is a file; give a folder (it will hold {INDEX} and tensors)")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite and not _holds_state(folder):
        raise OutputError(f"checkpoint folder {folder} is not empty and holds no prunekit training state; "
                          "choose another folder or pass overwrite=True (--overwrite)")
    return check_writable(folder, "checkpoint folder")


def _holds_state(folder: Path) -> bool:
    try:
        read_manifest(folder, kinds=(KIND,))
    except (ValueError, FileNotFoundError):
        return False
    return True


def save_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    callbacks: Sequence[Callback] = (), step: int = 0, *, epoch: int = 0,
                    history: list[dict[str, float]] | None = None, extra: dict[str, Any] | None = None,
                    overwrite: bool = False) -> Path:
    """Save model, masks, optimizer and callbacks' state to the folder ``path`` (atomic); returns the manifest.

    Saving again into a training-state folder replaces its state (that is what it is for); any other
    non-empty folder is refused unless ``overwrite``.
    """
    folder = check_folder(path, overwrite)
    tensors: dict[str, Tensor] = {}
    net = unwrap(model)
    doc: dict[str, Any] = {"step": int(step), "epoch": int(epoch), "history": history or []}
    doc["extra"] = _encode(extra or {}, "extra", tensors)
    doc["model"] = _encode(dict(net.state_dict()), "model", tensors)
    ms = attached(net)
    doc["masks"] = _encode(dict(ms.masks) if ms is not None else {}, "masks", tensors)
    doc["optimizer"] = _encode(optimizer.state_dict(), "optimizer", tensors) if optimizer is not None else None
    doc["callbacks"] = [{"type": type(cb).__name__, "state": _encode(cb.state_dict(), f"callbacks/{i}", tensors)}
                        for i, cb in enumerate(callbacks)]
    name = f"tensors-{int(step):09d}.safetensors"
    doc["tensors"] = name
    save_tensors(folder / name, _unshared(tensors), {"format": "prunekit", "kind": KIND})
    index = write_manifest(folder, KIND, doc)  # the commit point
    # this folder holds training state only (check_folder): the superseded tensor files are ours, and a
    # version-1 index would name a deleted one
    remove_owned([*(p for p in folder.iterdir() if TENSORS.match(p.name) and p.name != name), folder / LEGACY_INDEX])
    log.debug("checkpoint at step %d written to %s", step, folder)
    return index


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` read besides the tensors it loaded in place."""

    step: int
    epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def train_state(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                    device: str | torch.device = "cpu") -> TrainState:
        """A ``TrainState`` to pass to ``fit(..., state=...)`` so training resumes at this step."""
        return TrainState(model, optimizer, 0, 0, torch.device(device), step=self.step, epoch=self.epoch,
                          history=list(self.history))


def read_index(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the training-state folder ``path`` (clear errors for a missing or foreign folder)."""
    folder = Path(path)
    if not (folder / INDEX).is_file() and not (folder / LEGACY_INDEX).is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: {INDEX} not found")
    doc = read_manifest(folder, kinds=(KIND,), what="training-state checkpoint")
    name = doc.get("tensors")
    if not isinstance(name, str) or not TENSORS.match(name):
        raise ValueError(f"{folder / doc.get('manifest_file', INDEX)}: \"tensors\" must name a "
                         f"tensors-<step>.safetensors file in the folder, got {name!r:.100}")
    return doc


def load_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    callbacks: Sequence[Callback] = (), strict: bool = True) -> Checkpoint:
    """Load a checkpoint into ``model`` (weights, masks), ``optimizer`` and ``callbacks``, in place."""
    doc = read_index(path)
    saved = doc.get("callbacks", [])
    got = [type(cb).__name__ for cb in callbacks]
    if callbacks and [c["type"] for c in saved] != got:
        raise ValueError(f"checkpoint {path} holds callbacks {[c['type'] for c in saved]}, got {got}: pass the same "
                         "callbacks, in the same order, as when it was saved")
    if optimizer is not None and doc.get("optimizer") is None:
        raise ValueError(f"checkpoint {path} holds no optimizer state")
    net = unwrap(model)
    _check_model_tensors(Path(path) / doc["tensors"], doc["model"], net, strict)
    tensors, _ = load_tensors(Path(path) / doc["tensors"], "checkpoint tensor file")
    net.load_state_dict(_decode(doc["model"], tensors), strict=strict)
    masks = _decode(doc.get("masks", {}), tensors)
    if masks:
        dev = next(net.parameters()).device
        attach(net, {k: m.to(dev) for k, m in masks.items()})
    if optimizer is not None:
        optimizer.load_state_dict(_decode(doc["optimizer"], tensors))
    for cb, c in zip(callbacks, saved):
        cb.load_state_dict(_decode(c["state"], tensors))
    return Checkpoint(int(doc["step"]), int(doc["epoch"]), list(doc.get("history", [])),
                      _decode(doc.get("extra", {}), tensors))


def _check_model_tensors(file: Path, encoded: Any, net: nn.Module, strict: bool) -> None:
    """Check the model's entries of a tensor file (names, shapes, dtypes) from its header, before reading."""
    if not isinstance(encoded, dict):
        raise ValueError(f"training-state manifest beside {file}: \"model\" must be an object")
    refs = {k: v["__tensor__"] for k, v in encoded.items() if isinstance(v, dict) and "__tensor__" in v}
    state = net.state_dict()
    unknown = [k for k in refs if k not in state]
    if strict and unknown:
        raise ValueError(f"checkpoint tensor file {file}: unknown model tensor {unknown[0]!r} "
                         f"({len(unknown)} unknown)")
    head = check_tensor_file(file, None, what="checkpoint tensor file")
    for k, ref in refs.items():
        if k in state and ref in head and head[ref][0] != tuple(state[k].shape):
            raise ValueError(f"checkpoint tensor file {file}: tensor {k!r} has shape {list(head[ref][0])}, "
                             f"the model's is {list(state[k].shape)}")


@dataclass
class CheckpointEvery(Callback):
    """Save a checkpoint to ``path`` every ``every`` optimizer steps (and at the end) with ``callbacks``' state.

    Only rank 0 writes under torch.distributed.
    """

    path: str | os.PathLike
    every: int
    callbacks: list[Callback] = field(default_factory=list)
    at_end: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"every must be a positive integer (optimizer steps), got {self.every!r}")
        check_folder(self.path, self.overwrite)

    def _save(self, state: TrainState) -> None:
        if rank() != 0:  # one writer under torch.distributed; every rank holds the same state
            return
        save_checkpoint(self.path, state.model, state.optimizer, self.callbacks, state.step, epoch=state.epoch,
                        history=state.history, overwrite=self.overwrite)

    def on_step_end(self, state: TrainState, batch: Batch) -> None:
        if state.step % self.every == 0:
            self._save(state)

    def on_fit_end(self, state: TrainState) -> None:
        if self.at_end:
            self._save(state)
