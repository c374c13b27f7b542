"""Triggers and poisoning: a triggered input carries the trigger, a clean one never does; exact poison counts."""

from __future__ import annotations

import pytest
import torch

from prunekit.robust.poison import check_poison_args, make_trigger, poison


def test_badnets_window_is_stamped_on_the_end_of_a_signal_only():
    trig = make_trigger("badnets", (40,), size=5, amplitude=3.0)
    x = torch.randn(6, 40, generator=torch.Generator().manual_seed(0))
    xt = trig.apply(x)
    assert torch.equal(xt[:, 35:], torch.tensor([3.0, -3.0, 3.0, -3.0, 3.0]).expand(6, 5))
    assert torch.equal(xt[:, :35], x[:, :35])  # nothing outside the window moves
    assert trig.carried_by(xt).all() and not trig.carried_by(x).any()


def test_clean_mnist1d_and_digits_test_inputs_never_carry_the_trigger():
    from prunekit.zoo.datasets import get_dataset

    for name, shape in (("mnist1d", (40,)), ("digits", (1, 8, 8))):
        d = get_dataset(name) if name == "digits" else get_dataset(name, num_samples=500)
        trig = make_trigger("badnets", shape, low=float(d.x_train.min()), high=float(d.x_train.max()))
        assert not trig.carried_by(d.x_test).any(), name
        assert trig.carried_by(trig.apply(d.x_test)).all(), name


def test_corner_patch_is_a_checkerboard_in_the_bottom_right_corner():
    trig = make_trigger("badnets", (1, 8, 8), size=3, low=0.0, high=1.0)
    xt = trig.apply(torch.full((2, 1, 8, 8), 0.5))
    assert torch.equal(xt[0, 0, 5:, 5:], torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 0, 1]]))
    assert (xt[:, :, :5] == 0.5).all() and (xt[:, :, :, :5] == 0.5).all()


def test_blended_mixes_a_fixed_pattern_into_every_value():
    trig = make_trigger("blended", (1, 8, 8), alpha=0.2, seed=3)
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(trig.apply(x) - x, 0.2 * (trig.pattern - x), atol=1e-6)
    assert torch.equal(trig.pattern, make_trigger("blended", (1, 8, 8), alpha=0.2, seed=3).pattern)
    assert not trig.carried_by(x).any()


def test_poison_relabels_exactly_rate_times_n_non_target_examples():
    y = torch.arange(100) % 10
    x = torch.zeros(100, 40)
    trig = make_trigger("badnets", (40,))
    p = poison(x, y, trig, 0.05, target=0, num_classes=10, seed=1)
    assert len(p.poisoned) == 5 and (y[p.poisoned] != 0).all() and (p.y[p.poisoned] == 0).all()
    changed = torch.nonzero((p.x != x).any(1)).flatten()
    assert torch.equal(changed, p.poisoned)
    assert torch.equal(p.y[[i for i in range(100) if i not in set(p.poisoned.tolist())]],
                       y[[i for i in range(100) if i not in set(p.poisoned.tolist())]])
    assert torch.equal(x, torch.zeros(100, 40))  # the input is not changed


@pytest.mark.parametrize("rate,target,flag", [(0.0, 0, "--poison"), (1.0, 0, "--poison"), (0.1, 10, "--target"),
                                              (0.1, -1, "--target")])
def test_bad_poison_arguments_are_named(rate, target, flag):
    with pytest.raises(ValueError, match=flag):
        check_poison_args(rate, target, 10)
