"""ANP: masks in [0, 1] per feature map, the model untouched, seeded; the threshold rule never empties a layer."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.robust.anp import ANPConfig, anp_masks, anp_prune_set
from prunekit.robust.defenses import DefenseConfig, defend_


class TwoConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.c2, self.fc = nn.Conv1d(1, 4, 3, padding=1), nn.Conv1d(4, 5, 3, padding=1), nn.Linear(40, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x.view(len(x), 1, -1))))).flatten(1))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(24, 8, generator=g), torch.arange(24) % 3


def test_anp_masks_are_per_map_in_unit_range_and_leave_the_model_unchanged():
    model, (x, y) = TwoConv(), _data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = model(x)
    cfg = ANPConfig(iterations=5, batch_size=8)
    masks = anp_masks(model, x, y, cfg, seed=1)
    assert {k: tuple(v.shape) for k, v in masks.items()} == {"c1": (4,), "c2": (5,)}
    assert all(((m >= 0) & (m <= 1)).all() for m in masks.values())
    assert any((m < 1).any() for m in masks.values())  # the masks moved
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters()) and torch.equal(model(x), out)  # no hook left
    again = anp_masks(model, x, y, cfg, seed=1)
    assert all(torch.equal(again[k], masks[k]) for k in masks)


def test_threshold_rule_keeps_the_highest_map_of_a_layer_that_falls_entirely():
    masks = {"a": torch.tensor([0.1, 0.9, 0.15]), "b": torch.tensor([0.05, 0.1])}
    assert anp_prune_set(masks, 0.2) == {"a": [0, 2], "b": [0]}


def test_anp_defense_prunes_the_maps_below_the_threshold():
    model, (x, y) = TwoConv(), _data()
    cfg = DefenseConfig(anp=ANPConfig(iterations=5, batch_size=8, threshold=0.99))
    rep = defend_(model, "anp", (x, y), cfg)
    expected = anp_prune_set({k: torch.tensor(v) for k, v in rep["masks"].items()}, 0.99)
    assert rep["pruned"] == {k: v for k, v in expected.items() if v}
