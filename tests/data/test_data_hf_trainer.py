"""The Hugging Face Trainer adapter: a Trainer run records what a hand-written loop on the same batches records."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments  # noqa: E402
from transformers.data.data_collator import default_data_collator  # noqa: E402

from prunekit.data import FIELDS, Dynamics, DynamicsRecorder, aum, el2n, forgetting, loss  # noqa: E402
from prunekit.data.hf_trainer import record_trainer  # noqa: E402

N, SEQ, BATCH, EPOCHS, LR = 24, 6, 8, 2, 0.5


class Items(torch.utils.data.Dataset):
    """Token rows with a label and their position (``example_index``), as the adapter needs."""

    def __init__(self, ids: torch.Tensor, y: torch.Tensor, with_index: bool = True) -> None:
        self.ids, self.y, self.with_index = ids, y, with_index

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        item = {"input_ids": self.ids[i], "labels": int(self.y[i])}
        return {**item, "example_index": i} if self.with_index else item


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(N) % 3
    ids = torch.randint(3, 40, (N, SEQ), generator=g)
    ids[:, 0] = y  # the first token gives the class away: the model learns something in a few steps
    return ids, y


def _model() -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=SEQ, num_labels=3, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg)


def _args(tmp_path, **kw) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path / "hf"), num_train_epochs=EPOCHS,
                             per_device_train_batch_size=BATCH, learning_rate=LR, optim="sgd",
                             lr_scheduler_type="constant", weight_decay=0.0,
                             max_grad_norm=0.0, report_to="none", save_strategy="no", logging_strategy="no",
                             remove_unused_columns=False, use_cpu=True, disable_tqdm=True, seed=0,
                             dataloader_num_workers=0, **kw)


def _hand_loop(model: torch.nn.Module, ids: torch.Tensor, y: torch.Tensor, batches: list[torch.Tensor],
               rec: DynamicsRecorder) -> None:
    """Plain SGD over the Trainer's batches in its order, recorded with ``update`` by hand."""
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    model.train()
    per_epoch = -(-N // BATCH)
    for e in range(EPOCHS):
        with rec.epoch():
            for idx in batches[e * per_epoch:(e + 1) * per_epoch]:
                logits = model(input_ids=ids[idx]).logits
                rec.update(idx, logits, y[idx])
                opt.zero_grad()
                torch.nn.functional.cross_entropy(logits, y[idx]).backward()
                opt.step()


def test_trainer_records_what_a_hand_written_loop_records(tmp_path):
    ids, y = _data()
    model = _model()
    start = copy.deepcopy(model)
    seen: list[torch.Tensor] = []

    def collate(features: list[dict]) -> dict:  # the default collator, logging each batch's positions in order
        batch = default_data_collator(features)
        seen.append(batch["example_index"].clone())
        return batch

    rec = DynamicsRecorder(tmp_path / "trainer", N)
    trainer = Trainer(model=model, args=_args(tmp_path), train_dataset=Items(ids, y), data_collator=collate)
    cb = record_trainer(trainer, rec)
    trainer.train()
    per_epoch = -(-N // BATCH)
    assert rec.epochs_done == EPOCHS and cb.batches == EPOCHS * per_epoch == len(seen)
    assert sorted(torch.cat(seen[:per_epoch]).tolist()) == list(range(N))  # one epoch presents every example once
    by_hand = DynamicsRecorder(tmp_path / "hand", N)
    _hand_loop(start, ids, y, seen, by_hand)
    a, b = Dynamics(tmp_path / "trainer"), Dynamics(tmp_path / "hand")
    assert a.epochs == b.epochs == EPOCHS
    for f in FIELDS:
        assert not np.isnan(a.field(f)).any()
        np.testing.assert_allclose(a.field(f), b.field(f), atol=1e-6, rtol=0)
    assert not np.allclose(a.field("loss")[0], a.field("loss")[-1], atol=1e-3)  # it trained: the check can fail
    for score in (lambda r: el2n(r, epoch=1), forgetting, aum, loss):
        torch.testing.assert_close(score(a), score(b), atol=1e-6, rtol=0)


def test_a_batch_without_indices_is_a_clear_error(tmp_path):
    ids, y = _data()
    trainer = Trainer(model=_model(), args=_args(tmp_path, max_steps=1), train_dataset=Items(ids, y, with_index=False))
    record_trainer(trainer, DynamicsRecorder(tmp_path / "r", N))
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        trainer.train()


def test_attaching_twice_is_refused(tmp_path):
    ids, y = _data()
    trainer = Trainer(model=_model(), args=_args(tmp_path), train_dataset=Items(ids, y))
    record_trainer(trainer, DynamicsRecorder(tmp_path / "r", N))
    with pytest.raises(ValueError, match="already feeds"):
        record_trainer(trainer, DynamicsRecorder(tmp_path / "r2", N))
