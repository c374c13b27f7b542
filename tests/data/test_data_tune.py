"""choose_beta: grid search of CCS's hard cut-off against a caller's validation metric."""

from __future__ import annotations

import pytest
import torch

from prunekit.data import BetaChoice, choose_beta, select


def _scores() -> torch.Tensor:
    return torch.arange(20, dtype=torch.float64)  # example i has difficulty i


def test_ccs_subsets_of_the_hand_example():
    # 20 equally spaced scores, 50 strata: every survivor of the cut-off sits alone in its stratum, the
    # budget of 5 flows to the last 5 non-empty strata (equal sizes, visited in index order), so CCS keeps
    # the 5 hardest survivors {r - 5 .. r - 1} with r = 20 - floor(20 * beta) survivors.
    for beta, lo in ((0.0, 15), (0.1, 13), (0.2, 11), (0.3, 9), (0.4, 7)):
        assert select(_scores(), 0.25, "ccs", beta=beta, strata=50).tolist() == list(range(lo, lo + 5))


def test_choose_beta_finds_the_known_optimum():
    calls = []

    def evaluate(kept: torch.Tensor) -> float:  # best when the kept scores centre on 11
        calls.append(kept.tolist())
        return -abs(float(kept.double().mean()) - 11.0)

    ch = choose_beta(_scores(), 0.25, evaluate, strata=50)
    assert isinstance(ch, BetaChoice) and ch.beta == 0.3 and ch.skipped == ()
    # kept means 17, 15, 13, 11, 9 for beta 0 .. 0.4
    assert ch.values == pytest.approx({0.0: -6.0, 0.1: -4.0, 0.2: -2.0, 0.3: 0.0, 0.4: -2.0})
    assert len(calls) == 5 and calls[3] == [9, 10, 11, 12, 13]


def test_betas_above_one_minus_keep_are_skipped_and_ties_go_to_the_smaller_beta():
    ch = choose_beta(_scores(), 0.7, lambda kept: 1.0)  # 1 - 0.7 = 0.3: beta 0.4 cannot be used
    assert ch.skipped == (0.4,) and sorted(ch.values) == [0.0, 0.1, 0.2, 0.3] and ch.beta == 0.0
    ch = choose_beta(_scores(), 0.9, lambda kept: float(kept.numel()), betas=(0.3, 0.1, 0.0))
    assert ch.skipped == (0.3,) and sorted(ch.values) == [0.0, 0.1] and ch.values[0.1] == 18.0


def test_choose_beta_class_balanced_ccs():
    labels = torch.tensor([0] * 10 + [1] * 10)
    seen = []
    ch = choose_beta(_scores(), 0.5, lambda kept: seen.append(kept.tolist()) or 0.0, betas=(0.0, 0.5),
                     rule="class-balanced", labels=labels, within="ccs", strata=50)
    assert ch.beta == 0.0
    # beta 0.5 inside each class of 10 keeps its 5 easiest: 0-4 and 10-14
    assert seen[1] == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]


@pytest.mark.parametrize("kwargs, match", [
    ({"betas": ()}, "betas must be a non-empty"),
    ({"betas": (0.1, 1.2)}, "betas must be a number in"),
    ({"betas": (0.1, 0.1)}, "must not repeat"),
    ({"betas": (0.5, 0.6)}, "exceeds 1 - keep_fraction"),
    ({"rule": "keep-hard"}, "rule must be one of"),
    ({"rule": "class-balanced", "labels": [0] * 20}, "within='ccs'"),
    ({"beta": 0.1}, "pass the candidates as betas"),
])
def test_bad_arguments_are_rejected_before_any_evaluation(kwargs, match):
    calls = []
    with pytest.raises(ValueError, match=match):
        choose_beta(_scores(), 0.6, lambda kept: calls.append(1) or 0.0, **kwargs)
    assert calls == []


def test_bad_keep_fraction_scores_and_evaluate():
    with pytest.raises(ValueError, match="keep_fraction"):
        choose_beta(_scores(), 0.0, lambda kept: 0.0)
    with pytest.raises(ValueError, match="NaN"):
        choose_beta(torch.tensor([0.1, float("nan")]), 0.5, lambda kept: 0.0)
    with pytest.raises(TypeError, match="evaluate must be a callable"):
        choose_beta(_scores(), 0.5, 0.9)
    with pytest.raises(ValueError, match="evaluate must return a finite number"):
        choose_beta(_scores(), 0.5, lambda kept: float("nan"))
