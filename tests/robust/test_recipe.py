"""The defense recipe's clean-only rules: the held-out split, early stopping, FMP's progressive pruning,
the released code's feature objective, zeroing maps in several layers, and per-data-set attack defaults."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.robust.backdoor import BackdoorConfig, model_kwargs, trigger_for
from prunekit.robust.channels import accuracy_without, prune_channels_
from prunekit.robust.defenses import DefenseConfig, KeepBest, split_clean
from prunekit.robust.fmp import FMPConfig, feature_perturbation, fmp_scores, progressive_maps
from prunekit.robust.metrics import clean_accuracy

from .test_fmp import Planted, TwoConv, _signals


def test_split_clean_holds_out_a_quarter_of_each_class_but_never_a_lone_example():
    y = torch.tensor([0] * 8 + [1] * 4 + [2])  # 8, 4, 1 examples
    x = torch.arange(13.0).view(-1, 1)
    (fx, fy), (hx, hy) = split_clean((x, y), 0.25, seed=0)
    assert torch.bincount(hy, minlength=3).tolist() == [2, 1, 0]  # round(0.25 * 8), round(0.25 * 4), none of 1
    assert torch.bincount(fy, minlength=3).tolist() == [6, 3, 1]
    assert sorted(torch.cat([fx, hx]).flatten().tolist()) == x.flatten().tolist()  # a partition
    assert split_clean((x, y), 0.0, seed=0)[1][1].numel() == 0


def test_keep_best_restores_the_epoch_with_the_best_held_out_accuracy():
    model = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-1.0], [1.0]]))  # class 1 iff x > 0: right on every held-out example
    held = (torch.tensor([[-1.0], [2.0]]), torch.tensor([0, 1]))

    class State:
        epoch = 0

    state = State()
    state.model = model
    keep = KeepBest(held)
    keep.on_fit_start(state)  # epoch 0: accuracy 1.0
    with torch.no_grad():
        model.weight.mul_(-1)  # now wrong on both
    keep.on_epoch_end(state)  # epoch 1: accuracy 0.0
    keep.on_fit_end(state)
    assert keep.curve == [1.0, 0.0] and keep.best[1] == 0
    assert torch.equal(model.weight, torch.tensor([[-1.0], [1.0]]))


def test_progressive_rule_prunes_the_trigger_map_and_stops_at_the_first_map_clean_data_needs():
    x, y = _signals()
    model = Planted()
    scores = {"conv": {"order": [0, 1, 2]}}  # the trigger map first, then the two maps the task needs
    drop, trace = progressive_maps(model, scores, (x, y), max_drop=0.0, fraction=0.9)
    assert drop == {"conv": [0]}  # map 1 would cost class 1 (half the examples) -> the walk stops there
    assert trace["base"] == 1.0 and trace["stopped"]["conv"] == "clean accuracy (map 1)"
    drop, trace = progressive_maps(model, scores, (x, y), max_drop=0.6, fraction=0.9)
    assert drop == {"conv": [0, 1]} and trace["stopped"]["conv"] == "cap"  # floor(0.9 * 3) = 2 maps at most


def test_feature_objective_stays_in_budget_and_ranks_the_planted_trigger_map_first():
    x, y = _signals()
    model = Planted()
    start = torch.ones_like(x)
    delta = feature_perturbation(model, "conv", 0, x, eps=0.3, alpha=0.1, steps=2, start=start, bounds=(-1.2, 1.2))
    assert delta.abs().max() <= 0.3 + 1e-6 and (x + delta).max() <= 1.2 + 1e-6 and (x + delta).min() >= -1.2 - 1e-6
    for objective in ("feature", "loss"):
        s = fmp_scores(model, x, y, FMPConfig(eps=0.1, alpha=0.1, objective=objective))["conv"]
        assert s["order"][0] == 0, (objective, s)


def test_accuracy_without_zeroes_maps_in_several_layers_like_masks_do():
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(3))
    model = TwoConv()
    drop = {"c1": [1], "c2": [0, 3]}
    pruned = TwoConv()
    prune_channels_(pruned, drop, "mask")
    y = pruned(x).argmax(-1)
    assert accuracy_without(model, drop, x, y) == clean_accuracy(pruned, x, y) == 1.0
    assert accuracy_without(model, {}, x[:0], y[:0]) == 1.0


def test_recipe_settings_are_checked():
    with pytest.raises(ValueError, match="--holdout"):
        DefenseConfig(holdout=1.0)
    with pytest.raises(ValueError, match="held-out part"):
        DefenseConfig(holdout=0.0, early_stop=True)
    with pytest.raises(ValueError, match="FMP rule"):
        FMPConfig(rule="global")
    with pytest.raises(ValueError, match="FMP objective"):
        FMPConfig(objective="mse")
    with pytest.raises(ValueError, match="max_drop"):
        FMPConfig(max_drop=1.0)


def test_width_and_blend_opacity_defaults():
    assert model_kwargs("cnn1d", 64) == {"channels": 64} and model_kwargs("lenet5", None) == {}
    with pytest.raises(ValueError, match="--width"):
        model_kwargs("lenet5", 32)
    x = torch.rand(4, 1, 8, 8)
    assert trigger_for(BackdoorConfig(dataset="digits", attack="blended"), x).alpha == 0.4
    assert trigger_for(BackdoorConfig(dataset="mnist1d", attack="blended"), torch.rand(4, 40)).alpha == 0.2
    assert trigger_for(BackdoorConfig(dataset="digits", attack="blended", alpha=0.5), x).alpha == 0.5
