"""The dynamics recorder in a hand-written loop: the same records and scores as the ``fit`` callback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from prunekit.data import FIELDS, Dynamics, DynamicsRecorder, aum, el2n, forgetting, loss
from prunekit.training import fit

SEED, EPOCHS, BATCH, LR = 3, 3, 32, 0.05


def _own_loop(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, rec: DynamicsRecorder) -> None:
    """Plain SGD, shuffled batches in ``fit``'s order (a loader generator reseeded per epoch), recorded by hand."""
    torch.manual_seed(SEED)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    gen = torch.Generator()
    loader = DataLoader(TensorDataset(x, y, torch.arange(len(y))), batch_size=BATCH, shuffle=True, generator=gen)
    model.train()
    for e in range(EPOCHS):
        gen.manual_seed(SEED + e)
        with rec.epoch() as slot:
            assert slot == e
            for xb, yb, idx in loader:
                logits = model(xb)
                rec.update(idx, logits, yb)
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(logits, yb).backward()
                opt.step()


def test_own_loop_records_what_fit_records(tmp_path, make_mlp, blob_data):
    x, y = blob_data
    n = len(y)
    via_fit = DynamicsRecorder(tmp_path / "fit", n)
    fit(make_mlp(0), (x, y), epochs=EPOCHS, batch_size=BATCH, lr=LR, momentum=0.0, weight_decay=0.0,
        lr_schedule="constant", seed=SEED, callbacks=[via_fit])
    by_hand = DynamicsRecorder(tmp_path / "own", n)
    _own_loop(make_mlp(0), x, y, by_hand)
    a, b = Dynamics(tmp_path / "fit"), Dynamics(tmp_path / "own")
    assert a.epochs == b.epochs == EPOCHS and by_hand.epochs_done == EPOCHS
    for f in FIELDS:
        fa, fb = a.field(f), b.field(f)
        assert not np.isnan(fb).any()
        np.testing.assert_allclose(fb, fa, atol=1e-6, rtol=0)
    assert not np.allclose(a.field("loss")[0], a.field("loss")[-1])  # the model trained: the comparison can fail
    for score in (lambda r: el2n(r, epoch=1), forgetting, aum, loss):
        torch.testing.assert_close(score(b), score(a), atol=1e-6, rtol=0)


def test_update_rows_by_index_with_hand_computed_values(tmp_path):
    rec = DynamicsRecorder(tmp_path, num_examples=4)
    rec.start_epoch()
    z = torch.tensor([[0.0, 0.0], [3.0, 1.0]])
    rec.update(np.array([3, 0]), z, torch.tensor([1, 0]))
    rec.end_epoch()
    d = rec.dynamics()
    lo, m = d.field("loss")[0], d.field("margin")[0]
    assert lo[3] == pytest.approx(np.log(2.0), rel=1e-6)  # uniform over 2 classes
    assert lo[0] == pytest.approx(np.log1p(np.exp(-2.0)), rel=1e-5)
    assert m[3] == 0.0 and m[0] == pytest.approx(2.0)
    assert np.isnan(lo[[1, 2]]).all()  # not presented this epoch


def test_an_error_inside_the_epoch_leaves_it_open_and_uncounted(tmp_path):
    rec = DynamicsRecorder(tmp_path, num_examples=3)
    with pytest.raises(RuntimeError, match="boom"), rec.epoch():
        rec.update([0], torch.zeros(1, 2), torch.tensor([0]))
        raise RuntimeError("boom")
    assert rec.epochs_done == 0 and rec.open_epoch == 0
    with rec.epoch():
        rec.update([0, 1, 2], torch.zeros(3, 2), torch.tensor([0, 1, 0]))
    assert rec.epochs_done == 1 and Dynamics(tmp_path).epochs == 1


@pytest.mark.parametrize("args, match", [
    (([0, 1, 2], torch.zeros(2, 3), torch.tensor([0, 1])), r"indices must be .* shaped \(2,\)"),
    (([0, 1], torch.zeros(2, 3), torch.tensor([0, 1, 2])), r"targets must be .* shaped \(2,\)"),
    (([0, 5], torch.zeros(2, 3), torch.tensor([0, 1])), r"indices must be in 0\.\.4"),
    (([-1, 0], torch.zeros(2, 3), torch.tensor([0, 1])), r"indices must be in 0\.\.4"),
    (([0.0, 1.0], torch.zeros(2, 3), torch.tensor([0, 1])), "indices must be integer"),
    (([0, 1], torch.zeros(2, 3, 4), torch.tensor([0, 1])), r"logits must be .* \(B, C\)"),
    (([0, 1], torch.zeros(2, 3), torch.tensor([0.0, 1.0])), "targets must be integer"),
])
def test_update_rejects_bad_batches_naming_the_argument(tmp_path, args, match):
    rec = DynamicsRecorder(tmp_path, num_examples=5)
    with rec.epoch(), pytest.raises(ValueError, match=match):
        rec.update(*args)


def test_update_and_epochs_out_of_order_are_clear_errors(tmp_path):
    rec = DynamicsRecorder(tmp_path, num_examples=2)
    with pytest.raises(ValueError, match="no epoch is open"):
        rec.update([0], torch.zeros(1, 2), torch.tensor([0]))
    with pytest.raises(ValueError, match="no epoch is open"):
        rec.end_epoch()
    with pytest.raises(ValueError, match=r"epoch must be an integer in 0\.\.0"):
        rec.start_epoch(2)  # would leave epoch 1 unrecorded
    rec.start_epoch()
    with pytest.raises(ValueError, match="still open"):
        rec.start_epoch()
    with pytest.raises(ValueError, match=r"loss must be one value per example shaped \(1,\)"):
        rec.update([0], torch.zeros(1, 2), torch.tensor([0]), loss=torch.zeros(2))
