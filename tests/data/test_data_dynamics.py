"""The training-dynamics recorder and the scores derived from it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prunekit.data import (
    FIELDS,
    Dynamics,
    DynamicsRecorder,
    aum,
    el2n,
    entropy,
    forgetting,
    learned_epoch,
    loss,
    prob_aum,
    record_runs,
    training_accuracy,
)
from prunekit.data.dynamics import example_stats
from prunekit.data.scores import area_under_margin, first_epoch_reaching, forgetting_events
from prunekit.training import Batch, TrainState, fit


def test_example_stats_by_hand():
    z = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    y = torch.tensor([0, 1])
    st = example_stats(z, y, torch.tensor([0.5, 2.5]))
    e2 = math.exp(2.0)
    p0 = torch.tensor([e2, 1, 1]) / (e2 + 2)
    assert st.shape == (2, len(FIELDS))
    assert st[0, 1] == pytest.approx(float(p0[0]), rel=1e-5)  # p_label
    assert st[0, 2] == pytest.approx(2.0) and st[1, 2] == pytest.approx(-2.0)  # logit margins 2-0, 1-3
    assert st[:, 3].tolist() == [1.0, 0.0]  # correct
    assert st[0, 4] == pytest.approx(float((p0 - torch.tensor([1.0, 0, 0])).norm()), rel=1e-5)  # el2n
    assert st[0, 5] == pytest.approx(float(-(p0 * p0.log()).sum()), rel=1e-5)  # entropy
    assert st[0, 6] == pytest.approx(float(p0[0] - p0[1]), rel=1e-5)  # softmax margin: label vs best other
    assert st[:, 0].tolist() == [0.5, 2.5]


def _state(model):
    return TrainState(model, torch.optim.SGD(model.parameters(), lr=0.1), 10, 1, torch.device("cpu"))


def test_recorder_writes_rows_by_index_and_nan_for_unseen(tmp_path):
    rec = DynamicsRecorder(tmp_path / "d", num_examples=5)
    st = _state(torch.nn.Linear(2, 2))
    rec.on_epoch_start(st)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = Batch(torch.zeros(2, 2), torch.tensor([0, 0]), torch.tensor([4, 1]), z, torch.tensor([0.3, 0.7]))
    st.step = 1  # the loop counts the step before on_step_end; one step is the whole epoch here
    rec.on_step_end(st, b)
    rec.on_epoch_end(st)
    d = Dynamics(tmp_path / "d")
    assert d.epochs == 1 and d.num_examples == 5
    lo = d.field("loss")
    assert lo.shape == (1, 5)
    assert lo[0, 4] == pytest.approx(0.3) and lo[0, 1] == pytest.approx(0.7)
    assert np.isnan(lo[0, [0, 2, 3]]).all()
    assert d.field("correct")[0, [4, 1]].tolist() == [1.0, 0.0]


def test_recorder_with_fit_records_every_example_every_epoch(tmp_path, make_mlp, blob_data):
    x, y = blob_data
    rec = DynamicsRecorder(tmp_path, len(y))
    fit(make_mlp(0), (x, y), epochs=3, batch_size=64, lr=0.1, callbacks=[rec])
    d = rec.dynamics()
    assert d.epochs == 3
    for f in FIELDS:
        assert not np.isnan(d.field(f)).any()
    acc = d.field("correct").mean(1)
    assert acc[-1] > acc[0]  # the model learns the blobs
    assert (tmp_path / "dynamics.f32").stat().st_size == 3 * len(y) * len(FIELDS) * 4


def test_recorder_resumes_after_the_recorded_epochs(tmp_path, make_mlp, blob_data):
    x, y = blob_data
    fit(make_mlp(0), (x, y), epochs=2, batch_size=64, callbacks=[DynamicsRecorder(tmp_path, len(y))])
    first = Dynamics(tmp_path).field("loss").copy()
    rec = DynamicsRecorder(tmp_path, len(y))
    assert rec.epochs_done == 2
    fit(make_mlp(1), (x, y), epochs=1, batch_size=64, callbacks=[rec])
    d = Dynamics(tmp_path)
    assert d.epochs == 3
    np.testing.assert_array_equal(d.field("loss", [0, 1]), first)  # earlier epochs untouched
    with pytest.raises(ValueError, match="already holds"):
        DynamicsRecorder(tmp_path, len(y), resume=False)
    with pytest.raises(ValueError, match="records 300 examples"):
        DynamicsRecorder(tmp_path, 10)


def test_interrupted_epoch_is_not_counted(tmp_path):
    rec = DynamicsRecorder(tmp_path, 4)
    st = _state(torch.nn.Linear(2, 2))
    rec.on_epoch_start(st)
    b = Batch(torch.zeros(1, 2), torch.tensor([0]), torch.tensor([2]), torch.tensor([[0.0, 1.0]]), torch.tensor([1.0]))
    rec.on_step_end(st, b)  # crash here: the epoch never ends
    assert DynamicsRecorder(tmp_path, 4).epochs_done == 0


def _fake_run(path, fields: dict[str, np.ndarray]) -> Dynamics:
    """Write a run with the given ``(E, N)`` fields (others zero) through the recorder's file format."""
    e, n = next(iter(fields.values())).shape
    rec = DynamicsRecorder(path, n)
    st = _state(torch.nn.Linear(1, 1))
    for t in range(e):
        st.epoch, st.step = t, t + 1  # as fit: one step per epoch here, counted before on_epoch_end
        rec.on_epoch_start(st)
        rec._mm[0] = np.stack([fields.get(f, np.zeros((e, n)))[t] for f in FIELDS], axis=1)
        rec.on_epoch_end(st)
    return rec.dynamics()


def test_forgetting_counts_transitions_and_ranks_never_learned_first(tmp_path):
    correct = np.array([[1, 0, 0, 1],
                        [0, 1, 0, 1],
                        [1, 0, 0, np.nan],
                        [0, 0, 0, 0]], dtype=np.float32)  # (E=4, N=4)
    ev, learned, seen = forgetting_events(correct)
    # columns are examples: ex0 1,0,1,0 (two events), ex1 0,1,0,0 (one), ex2 never right, ex3 1,1,(unseen),0 (one)
    assert ev.tolist() == [2, 1, 0, 1]
    assert learned.tolist() == [True, True, False, True] and seen.tolist() == [4, 4, 4, 3]
    run = _fake_run(tmp_path / "a", {"correct": correct})
    f = forgetting(run)
    assert f.tolist() == [2.0, 1.0, 4.0, 1.0]  # never learned -> number of recorded epochs
    f2 = forgetting([run, _fake_run(tmp_path / "b", {"correct": correct})])
    assert f2.tolist() == [4.0, 2.0, 8.0, 2.0]  # summed over runs


def test_nan_epochs_are_skipped_in_forgetting():
    correct = np.array([[1.0], [np.nan], [0.0]], dtype=np.float32)
    assert forgetting_events(correct)[0].tolist() == [1]  # 1 -> (unseen) -> 0 is one event


def test_el2n_aum_loss_entropy_average_over_runs_and_epochs(tmp_path):
    a = {"el2n": np.array([[0.2, 0.8], [0.1, 0.9]]), "margin": np.array([[1.0, -1.0], [3.0, -2.0]]),
         "loss": np.array([[1.0, 2.0], [3.0, 4.0]]), "entropy": np.array([[0.5, 0.1], [0.3, 0.2]])}
    b = {k: v + 1.0 for k, v in a.items()}
    runs = [_fake_run(tmp_path / "a", a), _fake_run(tmp_path / "b", b)]
    assert el2n(runs, epoch=0).tolist() == pytest.approx([0.7, 1.3])  # mean of (0.2, 1.2), (0.8, 1.8)
    assert area_under_margin(runs).tolist() == pytest.approx([2.5, -1.0])  # mean of 1,3,2,4 / -1,-2,0,-1
    assert aum(runs).tolist() == pytest.approx([-2.5, 1.0])  # difficulty = -AUM: the low-margin one is harder
    assert aum(runs, epochs=1).tolist() == pytest.approx([-3.5, 1.5])
    pm = {"prob_margin": np.array([[0.5, -0.2], [0.9, 0.0]])}
    assert prob_aum(_fake_run(tmp_path / "c", pm)).tolist() == pytest.approx([-0.7, 0.1])
    assert loss(runs[0]).tolist() == pytest.approx([2.0, 3.0])
    assert entropy(runs[0]).tolist() == pytest.approx([0.3, 0.2])  # last epoch by default
    with pytest.raises(ValueError, match="epoch 5 is out of range"):
        el2n(runs, epoch=5)


def test_el2n_auto_epoch_is_first_epoch_at_fraction_of_final_training_accuracy(tmp_path):
    # correct (E=4, N=4) of two runs: accuracies 0, 1/4, 3/4, 1 and 0, 2/4, 1, 1 -> mean 0, 0.375, 0.875, 1
    ca = np.array([[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=np.float32)
    cb = np.array([[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]], dtype=np.float32)
    e2 = np.arange(16, dtype=np.float32).reshape(4, 4) / 16  # el2n differs in every epoch
    runs = [_fake_run(tmp_path / "a", {"correct": ca, "el2n": e2}),
            _fake_run(tmp_path / "b", {"correct": cb, "el2n": e2})]
    assert training_accuracy(runs).tolist() == pytest.approx([0.0, 0.375, 0.875, 1.0])
    assert learned_epoch(runs) == 3  # 0.875 < 0.9 * 1.0 <= 1.0
    assert learned_epoch(runs, fraction=0.8) == 2 and learned_epoch(runs, fraction=0.3) == 1
    assert el2n(runs, epoch="auto").tolist() == pytest.approx(e2[3].tolist())
    assert el2n(runs).tolist() == el2n(runs, epoch=3).tolist()  # "auto" is the default
    assert el2n(runs, fraction=0.8).tolist() == pytest.approx(e2[2].tolist())
    with pytest.raises(ValueError, match="epoch must be"):
        el2n(runs, epoch="early")
    with pytest.raises(ValueError, match="fraction must be in"):
        learned_epoch(runs, fraction=0.0)


def test_first_epoch_reaching_uses_the_final_value_and_skips_unseen_examples(tmp_path):
    assert first_epoch_reaching(np.array([0.2, 0.5, 0.4]), 0.9) == 1  # threshold 0.36 from the last value, not max
    assert first_epoch_reaching(np.array([0.0, 0.0]), 0.9) == 0  # nothing learned: the first epoch
    c = np.array([[1, np.nan, 0], [1, 1, 1]], dtype=np.float32)  # epoch 0: 1 of the 2 presented correct
    assert training_accuracy(_fake_run(tmp_path, {"correct": c})).tolist() == pytest.approx([0.5, 1.0])
    with pytest.raises(ValueError, match="curve must be"):
        first_epoch_reaching(np.array([]), 0.9)


def test_unseen_examples_in_chosen_epoch_are_an_error(tmp_path):
    run = _fake_run(tmp_path, {"el2n": np.array([[0.1, np.nan]])})
    with pytest.raises(ValueError, match="never presented"):
        el2n(run, epoch=0)


def test_record_runs_reuses_complete_runs(tmp_path, make_mlp, blob_data):
    calls = []

    def make(seed):
        calls.append(seed)
        return make_mlp(seed)

    runs = record_runs(make, blob_data, tmp_path, seeds=(0, 1), epochs=2, batch_size=64)
    assert [r.epochs for r in runs] == [2, 2] and calls == [0, 1]
    again = record_runs(make, blob_data, tmp_path, seeds=(0, 1), epochs=2, batch_size=64)
    assert calls == [0, 1]  # nothing retrained
    np.testing.assert_array_equal(again[1].field("loss"), runs[1].field("loss"))


def test_fit_resumed_mid_epoch_continues_that_epoch(tmp_path, make_mlp, make_blobs):
    x, y = make_blobs(n=30)
    model = make_mlp(0)
    rec = DynamicsRecorder(tmp_path, 30)
    res = fit(model, (x, y), steps=4, batch_size=10, callbacks=[rec])  # 3 batches per epoch: stops in epoch 1
    assert rec.epochs_done == 1 and rec.open_epoch == 1 and Dynamics(tmp_path).epochs == 1
    before = np.fromfile(tmp_path / "dynamics.f32", np.float32).reshape(-1, 30, len(FIELDS))[1, :, 0]
    assert (~np.isnan(before)).sum() == 10  # the one batch of epoch 1 that ran
    again = DynamicsRecorder(tmp_path, 30)  # e.g. a new process after a checkpoint
    fit(model, (x, y), steps=6, batch_size=10, callbacks=[again], state=res.state)
    d = Dynamics(tmp_path)
    assert d.epochs == 2 and again.open_epoch is None
    lo = d.field("loss", 1)[0]
    assert not np.isnan(lo).any()  # rows from before and after the interruption
    kept = ~np.isnan(before)
    np.testing.assert_array_equal(lo[kept], before[kept])
