"""The defender's clean set: stratified, exact size, and refused when it cannot hold every class."""

from __future__ import annotations

import pytest
import torch

from prunekit.robust.backdoor import check_clean_fraction, clean_subset
from prunekit.robust.defenses import DEFENSES, DefenseConfig


def test_clean_subset_holds_every_class_and_the_asked_size():
    y = torch.cat([torch.zeros(50), torch.ones(30), torch.full((20,), 2.0)]).long()
    n = check_clean_fraction(0.1, y, 3)
    idx = clean_subset(y, n, 3, seed=0)
    assert n == 10 and len(idx) == 10 and torch.equal(idx, torch.unique(idx))
    assert torch.bincount(y[idx], minlength=3).tolist() == [5, 3, 2]
    assert torch.equal(clean_subset(y, n, 3, seed=0), idx)


def test_clean_fraction_too_small_for_one_example_per_class_is_refused():
    y = torch.arange(100) % 10
    with pytest.raises(ValueError, match="one example of each of the 10 classes"):
        check_clean_fraction(0.05, y, 10)  # 5 examples for 10 classes
    assert check_clean_fraction(0.1, y, 10) == 10


def test_defense_names_and_settings_are_checked():
    assert DEFENSES.names() == ["anp", "fine-pruning", "finetune", "fmp", "none"]
    with pytest.raises(ValueError, match="accepted: anp, fine-pruning, finetune, fmp, none"):
        DEFENSES.get("nad")
    with pytest.raises(ValueError, match="--prune-by"):
        DefenseConfig(prune_by="zero")
