"""FMP ranks a planted trigger feature map first; pruning by mask and by removal give the same model."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.robust.channels import prune_channels_
from prunekit.robust.defenses import DefenseConfig, fine_pruning
from prunekit.robust.fmp import FMPConfig, fmp_scores, maps_to_prune
from prunekit.robust.metrics import attack_success_rate, clean_accuracy
from prunekit.robust.poison import make_trigger


class Planted(nn.Module):
    """Map 0 detects the alternating trigger and votes for class 0; maps 1 / 2 read the signal's sign."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 3, 4, bias=False)
        with torch.no_grad():
            self.conv.weight[0, 0] = torch.tensor([1.0, -1.0, 1.0, -1.0])  # trigger detector
            self.conv.weight[1, 0] = torch.full((4,), 0.25)  # mean > 0
            self.conv.weight[2, 0] = torch.full((4,), -0.25)  # mean < 0
        self.head = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))  # logit0 = 2 t + n, logit1 = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x.view(len(x), 1, -1))).amax(-1)  # (B, 3): t, p, n
        return self.head(h)


def _signals(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = (2.0 * y - 1.0).view(-1, 1) + 0.05 * torch.randn(n, 8, generator=g)  # class 1: +1, class 0: -1
    return x, y


def test_planted_model_is_backdoored():
    x, y = _signals()
    trig = make_trigger("badnets", (8,), size=4, amplitude=3.0)
    assert clean_accuracy(Planted(), x, y) == 1.0
    assert attack_success_rate(Planted(), x, y, trig, target=0) == 1.0


def test_fmp_ranks_the_planted_trigger_map_first():
    x, y = _signals()
    scores = fmp_scores(Planted(), x, y, FMPConfig(eps=0.1, alpha=0.1, steps=1))
    s = scores["conv"]
    assert s["order"][0] == 0, s
    assert s["accuracy"][0] < min(s["accuracy"][1:])  # the trigger map's perturbation hurts most
    assert maps_to_prune(scores, 0.34) == {"conv": [0]}


def test_pruning_the_ranked_map_removes_the_backdoor_and_keeps_clean_accuracy():
    x, y = _signals()
    trig = make_trigger("badnets", (8,), size=4, amplitude=3.0)
    for how in ("mask", "remove"):
        model = Planted()
        prune_channels_(model, {"conv": [0]}, how, x[:2])
        assert attack_success_rate(model, x, y, trig, target=0) == 0.0, how
        assert clean_accuracy(model, x, y) == 1.0, how
        assert model.conv.out_channels == (2 if how == "remove" else 3)


class TwoConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.c2, self.fc = nn.Conv1d(1, 4, 3, padding=1), nn.Conv1d(4, 5, 3, padding=1), nn.Linear(40, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x.view(len(x), 1, -1))))).flatten(1))


def test_mask_and_remove_give_the_same_outputs():
    x = torch.randn(5, 8)
    masked, removed = TwoConv(), TwoConv()
    drop = {"c1": [1], "c2": [0, 3]}
    prune_channels_(masked, drop, "mask")
    rep = prune_channels_(removed, drop, "remove", x[:2])
    assert torch.allclose(masked(x), removed(x), atol=1e-6)
    assert removed.c1.out_channels == 3 and removed.c2.out_channels == 3 and removed.fc.in_features == 24
    assert rep["params_after"] < rep["params_before"]


def test_fine_pruning_prunes_dormant_maps_of_the_last_conv_first():
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(2))
    model = TwoConv()
    with torch.no_grad():
        model.c2.bias[2] = -100.0  # map 2 never fires on clean data
    y = model(x).argmax(-1)  # labels the model gets right: pruning the dormant map costs nothing
    rep = fine_pruning(model, (x, y), DefenseConfig(finetune_epochs=0, fp_max_drop=0.0))
    assert 2 in rep["pruned"]["c2"]
    assert clean_accuracy(model, x, y) == 1.0  # stopped before clean accuracy fell
