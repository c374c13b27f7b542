"""The noise-aware selector: flag by AUM/loss (threshold samples or a fraction), then random or CCS on the rest."""

from __future__ import annotations

import logging

import pytest
import torch

from prunekit.data import (
    DynamicsRecorder,
    FlagChoice,
    aum,
    aum_threshold,
    choose_flag_fraction,
    flag_noisy,
    select,
    threshold_samples,
)
from prunekit.training import fit


def _scores() -> torch.Tensor:
    return torch.arange(20, dtype=torch.float64)  # example i has difficulty i


def test_flagged_examples_go_first_then_the_rule_runs_on_the_rest():
    s = _scores()
    # flag_fraction 0.2 of 20 flags the 4 hardest (16-19); keep 0.25 = 5 of the 16 left
    assert select(s, 0.25, "noise-aware", flag_fraction=0.2, then="keep-hard").tolist() == [11, 12, 13, 14, 15]
    assert select(s, 0.25, "noise-aware", flag_fraction=0.2, then="keep-easy").tolist() == [0, 1, 2, 3, 4]
    kept = select(s, 0.25, "noise-aware", flag_fraction=0.2, then="random", seed=3)
    assert len(kept) == 5 and int(kept.max()) <= 15  # random over 0..15, never a flagged one
    assert torch.equal(kept, select(s, 0.25, "noise-aware", flag_fraction=0.2, seed=3))  # random is the default


def test_threshold_flags_every_score_at_or_above_it():
    flags = flag_noisy(_scores(), 5, threshold=17.0)
    assert torch.nonzero(flags.mask).flatten().tolist() == [17, 18, 19]
    assert flags.summary() == {"rule": "threshold", "threshold": 17.0, "flagged_by_rule": 3, "dropped": 3,
                               "capped": False}
    assert select(_scores(), 0.25, "noise-aware", threshold=17.0, then="keep-hard").tolist() == [12, 13, 14, 15, 16]


def test_the_cap_keeps_enough_examples_and_is_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="prunekit.data.select"):
        flags = flag_noisy(_scores(), 18, flag_fraction=0.2)  # keep 18 of 20: only 2 of the 4 may go
    assert flags.capped and flags.wanted == 4 and flags.num_flagged == 2
    assert torch.nonzero(flags.mask).flatten().tolist() == [18, 19]  # the most suspicious go
    assert "only 2 may be dropped" in caplog.text
    assert select(_scores(), 0.9, "noise-aware", flag_fraction=0.2).tolist() == list(range(18))


def test_then_ccs_equals_ccs_with_the_combined_cut_off():
    # flagging 20% then CCS with beta 0.1 (of all N) cuts the 6 hardest, as CCS with beta 0.3 does; the 14
    # survivors sit one per stratum and the budget of 5 goes to the last 5: 9..13 (see test_data_tune)
    got = select(_scores(), 0.25, "noise-aware", flag_fraction=0.2, then="ccs", beta=0.1, strata=50)
    assert got.tolist() == [9, 10, 11, 12, 13]
    assert torch.equal(got, select(_scores(), 0.25, "ccs", beta=0.3, strata=50))


def test_flag_scores_differ_from_the_selection_scores():
    flag = torch.zeros(10)
    flag[[2, 7]] = 5.0  # examples 2 and 7 look mislabeled
    kept = select(torch.arange(10.0), 0.5, "noise-aware", flag_scores=flag, flag_fraction=0.2, then="keep-hard")
    assert kept.tolist() == [4, 5, 6, 8, 9]


def test_aum_threshold_is_the_99th_percentile_of_the_threshold_samples_aum():
    threshold_aum = torch.arange(101, dtype=torch.float64)  # AUM 0..100: the 99th percentile is 99
    t = aum_threshold(-threshold_aum)  # the aum score is -AUM (a difficulty)
    assert t == pytest.approx(-99.0)
    flags = flag_noisy(-torch.tensor([98.0, 99.0, 99.5, 150.0]), 1, threshold=t)  # flag AUM <= 99
    assert flags.mask.tolist() == [True, True, False, False]
    assert aum_threshold(-threshold_aum, percentile=50) == pytest.approx(-50.0)


def test_threshold_samples_move_one_in_c_plus_one_examples_to_a_new_class():
    y = torch.arange(12) % 3
    y2, mask = threshold_samples(y, 3, seed=0)
    assert int(mask.sum()) == 3 and (y2[mask] == 3).all() and torch.equal(y2[~mask], y[~mask])
    y3, mask3 = threshold_samples(y, 3, seed=1, count=5)
    assert int(mask3.sum()) == 5 and (y3[mask3] == 3).all()


def test_choose_flag_fraction_finds_the_known_optimum_and_skips_large_fractions():
    def evaluate(kept: torch.Tensor) -> float:  # best when the kept scores centre on 11
        return -abs(float(kept.double().mean()) - 11.0)

    ch = choose_flag_fraction(_scores(), 0.25, evaluate, then="keep-hard")
    assert isinstance(ch, FlagChoice) and ch.flag_fraction == 0.3 and ch.skipped == ()
    # keep-hard after dropping floor(20 fr): kept mean 17 - 20 fr
    assert ch.values == pytest.approx({0.0: -6.0, 0.1: -4.0, 0.2: -2.0, 0.3: 0.0, 0.4: -2.0, 0.5: -4.0})
    ch = choose_flag_fraction(_scores(), 0.7, lambda kept: 1.0)  # 1 - 0.7 = 0.3: 0.4 and 0.5 cannot be used
    assert ch.skipped == (0.4, 0.5) and ch.flag_fraction == 0.0  # ties go to the smaller fraction


@pytest.mark.parametrize("kwargs, match", [
    ({"flag_fraction": 0.1, "threshold": 1.0}, "either threshold or flag_fraction"),
    ({"then": "dbp"}, "then"),
    ({"flag_fraction": 1.0}, "flag_fraction"),
    ({"threshold": float("nan")}, "threshold must be a finite number"),
    ({"flag_scores": torch.zeros(3)}, "flag_scores"),
])
def test_bad_arguments_name_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        select(_scores(), 0.5, "noise-aware", **kwargs)


def test_choose_flag_fraction_refuses_the_searched_parameter():
    with pytest.raises(ValueError, match="flag_fraction is not a parameter here"):
        choose_flag_fraction(_scores(), 0.5, lambda kept: 0.0, flag_fraction=0.1)
    with pytest.raises(ValueError, match="fractions must be a non-empty"):
        choose_flag_fraction(_scores(), 0.5, lambda kept: 0.0, fractions=())


def test_on_noisy_blobs_the_rule_drops_the_flipped_labels_keep_hard_keeps(tmp_path, make_blobs, make_mlp):
    x, y = make_blobs(n=300, d=8, classes=3, seed=2, spread=1.0)
    gen = torch.Generator().manual_seed(0)
    flipped = torch.zeros(300, dtype=torch.bool)
    flipped[torch.randperm(300, generator=gen)[:60]] = True  # 20% symmetric noise
    y_noisy = torch.where(flipped, (y + torch.randint(1, 3, (300,), generator=gen)) % 3, y)
    rec = DynamicsRecorder(tmp_path, 300)
    fit(make_mlp(0), (x, y_noisy), epochs=6, batch_size=50, lr=0.1, callbacks=[rec], seed=0)
    neg_aum = aum(rec.dynamics())
    clean = select(neg_aum, 0.3, "noise-aware", flag_fraction=0.2, seed=0)
    hard = select(neg_aum, 0.3, "keep-hard")
    assert float(flipped[clean].float().mean()) <= 0.05  # 90 kept, at most 4 flipped
    assert float(flipped[hard].float().mean()) >= 0.5  # keep-hard keeps mostly the flipped labels
