"""A Hugging Face ``Trainer`` adapter for ``DynamicsRecorder``: EL2N / forgetting / AUM / loss from ``Trainer.train``.

The recorder needs, per training batch, the examples' positions in the training set, the logits
and the labels (``recorder.update(indices, logits, targets)``). A ``Trainer`` does not pass example
positions to the model, so the data set must carry them and the collator must let them through:

- each training item holds its position under ``index_key`` (default ``"example_index"``), e.g.
  ``{"input_ids": ..., "labels": 3, "example_index": i}`` (``datasets``: ``ds.map(lambda r, i:
  {"example_index": i}, with_indices=True)``);
- ``TrainingArguments(remove_unused_columns=False)``: otherwise the Trainer drops every column the
  model's ``forward`` does not name, the index included; ``default_data_collator`` and
  ``DataCollatorWithPadding`` stack an integer field into a ``(B,)`` tensor.

``DynamicsTrainerCallback(recorder).attach(trainer)`` then wraps ``trainer.compute_loss``: it pops the
index from the batch (the model never sees it), runs the Trainer's own loss, and records the
batch's logits (``outputs.logits``) and labels while the model is in training mode (evaluation
batches are not recorded). Epochs open and close on the callback's ``on_epoch_begin`` /
``on_epoch_end``; an epoch cut short by ``max_steps`` stays open, uncounted.
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import TrainerCallback

from .dynamics import DynamicsRecorder

log = logging.getLogger(__name__)


class DynamicsTrainerCallback(TrainerCallback):
    """Feeds a ``DynamicsRecorder`` from a ``transformers.Trainer``: batches via ``compute_loss``, epochs via events."""

    def __init__(self, recorder: DynamicsRecorder, index_key: str = "example_index", label_key: str = "labels") -> None:
        if not isinstance(recorder, DynamicsRecorder):
            raise TypeError(f"recorder must be a DynamicsRecorder, got {type(recorder).__name__}")
        self.recorder, self.index_key, self.label_key = recorder, index_key, label_key
        self._offset: int | None = None
        self.batches = 0  # training batches recorded

    def attach(self, trainer: Any) -> Any:
        """Wrap ``trainer.compute_loss`` and register this callback on ``trainer``; return the trainer."""
        if getattr(trainer.compute_loss, "_prunekit_recorder", None) is not None:
            raise ValueError("this Trainer already feeds a DynamicsRecorder; attach one callback per Trainer")
        original = trainer.compute_loss

        def compute_loss(model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            idx = self._pop_index(model, inputs)
            labels = inputs.get(self.label_key)
            loss, outputs = original(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
            if idx is not None:
                self._record(idx, outputs, labels)
            return (loss, outputs) if return_outputs else loss

        compute_loss._prunekit_recorder = self.recorder  # type: ignore[attr-defined]
        trainer.compute_loss = compute_loss
        trainer.add_callback(self)
        return trainer

    def _pop_index(self, model: Any, inputs: dict[str, Any]) -> Any:
        """The batch's example positions (removed from ``inputs``); ``None`` for an evaluation batch."""
        if self.index_key in inputs:
            idx = inputs.pop(self.index_key)
            return idx if model.training else None
        if model.training:
            raise ValueError(f"the training batch has no {self.index_key!r} field (it has {sorted(inputs)}): give each "
                             f"training item its position as {self.index_key!r} and pass "
                             "TrainingArguments(remove_unused_columns=False) so the collator keeps it")
        return None

    def _record(self, idx: Any, outputs: Any, labels: Any) -> None:
        logits = outputs["logits"] if isinstance(outputs, dict) or hasattr(outputs, "keys") else outputs[1]
        if labels is None:
            raise ValueError(f"the training batch has no {self.label_key!r} field; the recorder needs the labels")
        if self.recorder.current_epoch is None:  # a batch outside on_epoch_begin/end (a resumed run): open one
            self.recorder.start_epoch(keep_rows=True)
        self.recorder.update(idx, logits, labels)
        self.batches += 1

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._offset = self.recorder.epochs_done - int(state.epoch or 0)

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._offset is None:
            self.on_train_begin(args, state, control)
        slot = min(self._offset + int(state.epoch or 0), self.recorder.epochs_done)  # type: ignore[operator]
        self.recorder.start_epoch(slot, keep_rows=True)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.recorder.current_epoch is not None:
            self.recorder.end_epoch(complete=True)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.recorder.current_epoch is not None:  # stopped mid-epoch (max_steps): keep the rows, do not count it
            log.info("training ended inside epoch %s; it stays open (not counted)", self.recorder.current_epoch)
            self.recorder.end_epoch(complete=False)
        self._offset = None


def record_trainer(trainer: Any, recorder: DynamicsRecorder, index_key: str = "example_index",
                   label_key: str = "labels") -> DynamicsTrainerCallback:
    """Make ``trainer`` record its training dynamics into ``recorder``; returns the attached callback."""
    cb = DynamicsTrainerCallback(recorder, index_key=index_key, label_key=label_key)
    cb.attach(trainer)
    return cb
