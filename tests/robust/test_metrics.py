"""ASR and RA count only triggered inputs whose true class is not the target."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.robust.metrics import attack_success_rate, backdoor_metrics, robust_accuracy
from prunekit.robust.poison import make_trigger


class ReadFirst(nn.Module):
    """Predicts the class written in the first value of the signal (the trigger window never touches it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10.0 * nn.functional.one_hot(x[:, 0].round().long(), 10).float()


def test_asr_excludes_inputs_of_the_target_class():
    x = torch.zeros(4, 8)
    x[:, 0] = torch.tensor([0.0, 0.0, 1.0, 0.0])  # predictions 0, 0, 1, 0
    y = torch.tensor([0, 1, 1, 2])  # the first input is of the target class: it is not counted
    trig = make_trigger("badnets", (8,), size=3)
    assert attack_success_rate(ReadFirst(), x, y, trig, target=0) == 2 / 3  # 3/4 if the target row counted
    assert robust_accuracy(ReadFirst(), x, y, trig, target=0) == 1 / 3
    m = backdoor_metrics(ReadFirst(), x, y, trig, target=0)
    assert m == {"clean_acc": 0.5, "asr": 2 / 3, "ra": 1 / 3}
