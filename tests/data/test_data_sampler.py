"""RS2 sampler: fresh subsets per epoch, full coverage without replacement, seeded, resumable, works in fit."""

from __future__ import annotations

import pytest
import torch

from prunekit.data import DynamicsRecorder, RS2Sampler
from prunekit.training import fit


def test_without_replacement_sees_every_example_once_per_cycle():
    s = RS2Sampler(100, 0.1, seed=0)
    sch = s.schedule(10)  # (10, 10)
    assert sch.shape == (10, 10)
    assert sorted(sch.flatten().tolist()) == list(range(100))  # 1 / 0.1 epochs cover all once
    assert len({tuple(sorted(r)) for r in sch.tolist()}) == 10  # a different subset each epoch


def test_with_replacement_draws_independent_subsets():
    sch = RS2Sampler(100, 0.1, replacement=True, seed=0).schedule(10)
    assert all(len(set(r)) == 10 for r in sch.tolist())  # no repeat within an epoch
    assert len(set(sch.flatten().tolist())) < 100  # repeats across epochs are expected


def test_seeded_and_resumable():
    a = RS2Sampler(50, 0.2, seed=4)
    a.schedule(3)
    st = a.state_dict()
    rest = a.schedule(4)
    b = RS2Sampler(50, 0.2, seed=4)
    b.load_state_dict(st)
    assert torch.equal(b.schedule(4), rest) and b.epoch == 7
    assert torch.equal(RS2Sampler(50, 0.2, seed=4).schedule(2), RS2Sampler(50, 0.2, seed=4).schedule(2))


def test_bad_arguments():
    with pytest.raises(ValueError, match="keep_fraction"):
        RS2Sampler(10, 0.0)
    with pytest.raises(ValueError, match="num_examples"):
        RS2Sampler(0, 0.5)
    with pytest.raises(ValueError, match="replacement"):
        RS2Sampler(10, 0.5, replacement="yes")


def test_rs2_in_fit_trains_on_a_new_subset_each_epoch(tmp_path, make_mlp, blob_data):
    x, y = blob_data  # 300 examples
    rec = DynamicsRecorder(tmp_path, len(y))
    res = fit(make_mlp(0), (x, y), steps=12, batch_size=10, sampler=RS2Sampler(300, 0.1, seed=0), callbacks=[rec])
    assert res.state.step == 12 and res.state.steps_per_epoch == 3  # 30 examples per epoch, 3 batches
    seen = ~torch.isnan(torch.from_numpy(rec.dynamics().field("loss")))  # (4 epochs, 300)
    assert seen.sum(1).tolist() == [30, 30, 30, 30]
    assert int(seen.any(0).sum()) == 120  # without replacement: 4 disjoint subsets
