"""Selectors: direction by name, exact counts, class balance, CCS strata and cut-off, DBP quotas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.data import SELECTORS, select
from prunekit.data.select import box_projection, dbp_quotas, largest_remainder, strata_of, stratum_budgets

S = torch.tensor([0.5, 0.9, 0.1, 0.7, 0.3, 0.9])


def test_rule_names():
    assert SELECTORS.names() == ["ccs", "class-balanced", "dbp", "keep-easy", "keep-hard", "noise-aware", "random",
                                 "random-subset"]  # random-subset is the rule's registry name, random its spelling
    with pytest.raises(ValueError, match="accepted: ccs, class-balanced"):
        select(S, 0.5, "hardest")


def test_keep_hard_and_keep_easy_by_hand():
    assert select(S, 0.5, "keep-hard").tolist() == [1, 3, 5]
    assert select(S, 0.5, "keep-easy").tolist() == [0, 2, 4]
    assert select(S, 1 / 6, "keep-hard").tolist() == [1]  # tie 0.9 at 1 and 5: the lower index wins


@given(n=st.integers(1, 200), f=st.floats(0.001, 1.0), seed=st.integers(0, 5),
       rule=st.sampled_from(["keep-hard", "keep-easy", "random", "ccs"]))
@settings(max_examples=60, deadline=None)
def test_every_rule_returns_sorted_unique_indices_of_exact_count(n, f, seed, rule):
    s = torch.rand(n, generator=torch.Generator().manual_seed(seed))
    k = select(s, f, rule, seed=seed)
    assert k.dtype == torch.long
    assert len(k) == max(1, round(f * n))
    assert (k[1:] > k[:-1]).all() and int(k.min()) >= 0 and int(k.max()) < n


def test_random_is_seeded():
    s = torch.zeros(100)
    assert torch.equal(select(s, 0.3, "random", seed=1), select(s, 0.3, "random", seed=1))
    assert not torch.equal(select(s, 0.3, "random", seed=1), select(s, 0.3, "random", seed=2))


def test_class_balanced_keeps_each_class_in_proportion():
    y = torch.tensor([0] * 10 + [1] * 30 + [2] * 60)
    s = torch.arange(100, dtype=torch.float64)
    k = select(s, 0.2, "class-balanced", labels=y)
    assert np.bincount(y[k].numpy()).tolist() == [2, 6, 12]
    assert k[:2].tolist() == [8, 9]  # keep-hard within class 0: its highest scores
    easy = select(s, 0.2, "class-balanced", labels=y, within="keep-easy")
    assert easy[:2].tolist() == [0, 1]
    with pytest.raises(ValueError, match="within must be one of"):
        select(s, 0.2, "class-balanced", labels=y, within="hardest")
    with pytest.raises(ValueError, match="needs labels"):
        select(s, 0.2, "class-balanced")


def test_largest_remainder_hits_total_within_bounds():
    q = largest_remainder(np.array([1.5, 1.5, 1.0]), 4, np.array([5, 5, 5]))
    assert q.tolist() == [2, 1, 1] and q.sum() == 4
    assert largest_remainder(np.array([3.0, 0.2]), 4, np.array([2, 9])).tolist() == [2, 2]


def test_ccs_stratum_budgets_flow_from_small_to_large():
    # sizes 0,1,3,5,100 visited in that order with floor(left / strata left): 0, 1, 3, 5, 11
    assert stratum_budgets(np.array([1, 5, 100, 3, 0]), 20).tolist() == [1, 5, 11, 3, 0]
    assert stratum_budgets(np.array([4, 4, 4]), 7).tolist() == [2, 2, 3]
    with pytest.raises(ValueError, match="cannot keep 10"):
        stratum_budgets(np.array([2, 3]), 10)


def test_strata_are_equal_width_over_the_range():
    s = torch.tensor([0.0, 0.24, 0.26, 0.99, 1.0])
    assert strata_of(s, 4).tolist() == [0, 0, 1, 3, 3]
    assert strata_of(torch.ones(3), 5).tolist() == [0, 0, 0]


def test_ccs_covers_the_score_range_and_cuts_the_hardest():
    s = torch.cat([torch.linspace(0, 1, 900), torch.full((100,), 5.0)])  # 100 outliers score far above
    k = select(s, 0.1, "ccs", beta=0.1, strata=10, seed=0)
    assert len(k) == 100
    assert int(k.max()) < 900  # the beta cut removed all 100 hardest
    counts = np.bincount(strata_of(s[:900], 10).numpy()[k.numpy()], minlength=10)
    assert counts.tolist() == [10] * 10  # uniform coverage of difficulty, unlike keep-hard
    assert select(s, 0.1, "keep-hard").min() >= 900


def test_ccs_cutoff_can_use_another_score():
    s = torch.arange(10, dtype=torch.float64)
    cut = torch.tensor([9.0, 8, 0, 0, 0, 0, 0, 0, 0, 0])  # e.g. -AUM flags examples 0 and 1
    k = select(s, 0.5, "ccs", beta=0.2, strata=1, cutoff_scores=cut, seed=0)
    assert 0 not in k.tolist() and 1 not in k.tolist() and len(k) == 5


def test_ccs_rejects_beta_that_leaves_too_few():
    with pytest.raises(ValueError, match="use beta <= 1 - keep_fraction"):
        select(torch.rand(100), 0.5, "ccs", beta=0.6)
    with pytest.raises(ValueError, match=r"beta must be a number in \[0, 1.0\)"):
        select(torch.rand(100), 0.5, "ccs", beta=1.0)


def test_box_projection_is_the_kkt_solution():
    p = np.array([5.0, 1.0, 0.0])
    x = box_projection(p, 6.0, np.array([1.0, 1.0, 1.0]), np.array([3.0, 10.0, 10.0]))
    # x0 capped at 3, x2 raised to its lower bound 1, the rest shifted: p1 + lam = 2 with lam = 1
    np.testing.assert_allclose(x, [3.0, 2.0, 1.0], atol=1e-6)


def test_dbp_quotas_follow_complexity_within_bounds():
    sizes = np.array([100, 100, 100, 5])
    c = np.array([0.1, 0.5, 0.9, 1.0])
    # 60 * softmax(c / 0.5) = 4.22, 9.39, 20.89, 25.51; cluster 3 is capped at its 5 members, the other
    # 55 go to clip(p + lam, 7.5, 100) with lam = (55 - 34.49) / 3 = 6.84: 11.05, 16.22, 27.72 -> 11, 16, 28
    assert dbp_quotas(c, sizes, total=60, temperature=0.5, min_ratio=0.5).tolist() == [11, 16, 28, 5]
    # min_ratio 1 raises the lower bound to 15: 15, 15, 20.89 + 4.11
    assert dbp_quotas(c, sizes, total=60, temperature=0.5, min_ratio=1.0).tolist() == [15, 15, 25, 5]
    with pytest.raises(ValueError, match="temperature must be > 0"):
        dbp_quotas(c, sizes, total=60, temperature=0.0)


def test_dbp_selects_quota_per_cluster_keeping_far_examples():
    clusters = np.repeat([0, 1], 50)
    s = torch.cat([torch.linspace(0, 1, 50), torch.linspace(0, 1, 50)])
    k = select(s, 0.2, "dbp", clusters=clusters, complexity=[0.0, 10.0], temperature=1.0, min_ratio=0.5)
    per = np.bincount(clusters[k.numpy()], minlength=2)
    assert per.tolist() == [5, 15]  # cluster 0 gets its lower bound 0.5 * 20 / 2
    assert s[k].min() > 0.5  # keep-hard inside each cluster
    with pytest.raises(ValueError, match="needs clusters"):
        select(s, 0.2, "dbp")
    with pytest.raises(ValueError, match=r"clusters must be class indices in \[0, 2\)"):
        select(s, 0.2, "dbp", clusters=clusters + 1, complexity=[0.0, 1.0])


def test_class_balanced_ccs_cannot_empty_a_class():
    y = torch.tensor([0] * 80 + [1] * 20)
    s = torch.cat([torch.linspace(0, 1, 80), torch.linspace(5, 6, 20)])  # class 1 is all harder than class 0
    plain = select(s, 0.1, "ccs", beta=0.3, strata=5, seed=0)
    assert (y[plain] == 1).sum() == 0  # the global cut-off removes the whole hard class
    bal = select(s, 0.1, "class-balanced", labels=y, within="ccs", beta=0.3, strata=5, seed=0)
    assert np.bincount(y[bal].numpy()).tolist() == [8, 2]
    assert s[bal[y[bal] == 1]].max() < 6 - 0.3  # inside class 1 its own 30% hardest were cut
    with pytest.raises(ValueError, match="use beta <= 1 - keep_fraction"):
        select(s, 0.8, "class-balanced", labels=y, within="ccs", beta=0.3)
