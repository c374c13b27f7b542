"""Forget sets, the loss-threshold membership inference, the L1 schedule and the gap to retraining."""

from __future__ import annotations

import pytest
import torch

from prunekit.robust.unlearn import L1Decay, gap, loss_threshold, parse_forget


def test_forget_sets():
    y = torch.arange(50) % 5
    kind, idx = parse_forget("class:3", y, 5)
    assert kind == "class" and torch.equal(idx, torch.arange(3, 50, 5))
    kind, idx = parse_forget("random:0.1", y, 5, seed=1)
    assert kind == "random" and len(idx) == 5 and torch.equal(idx, torch.unique(idx))
    assert torch.equal(parse_forget("random:0.1", y, 5, seed=1)[1], idx)


@pytest.mark.parametrize("spec", ["class:5", "class:-1", "class:x", "random:0", "random:1.5", "cls:1", "random"])
def test_bad_forget_specs_name_the_flag(spec):
    with pytest.raises(ValueError, match="--forget"):
        parse_forget(spec, torch.arange(50) % 5, 5)


def test_loss_threshold_separates_members_from_non_members():
    member, nonmember = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.25, 0.9, 1.2])
    assert loss_threshold(member, nonmember) == pytest.approx(0.2)  # TPR 2/3, TNR 1: the best balanced accuracy
    assert loss_threshold(torch.tensor([0.1]), torch.tensor([0.5])) == pytest.approx(0.1)


def test_l1_penalty_decays_linearly():
    class S:
        step, total_steps = 5, 10
        model = torch.nn.Linear(2, 1, bias=False)

    with torch.no_grad():
        S.model.weight.copy_(torch.tensor([[1.0, -3.0]]))
    out = L1Decay(0.1).loss(S, None, torch.tensor(0.0))
    assert float(out.detach()) == pytest.approx(0.1 * 0.5 * 4.0)


def test_gap_is_the_mean_absolute_difference():
    ref = {"forget_acc": 0.0, "retain_acc": 1.0, "test_acc": 0.9, "mia_efficacy": 1.0}
    m = {"forget_acc": 0.4, "retain_acc": 0.9, "test_acc": 0.9, "mia_efficacy": 0.5}
    assert gap(m, ref) == pytest.approx((0.4 + 0.1 + 0.0 + 0.5) / 4)
