"""DSIR on a mixed text pool: hashed n-grams, importance weights, Gumbel top-k, KL reduction."""

from __future__ import annotations

import numpy as np
import pytest

from prunekit.data import dsir, hashed_ngrams, kl_reduction
from prunekit.data.dsir import bucket_of, gumbel_top_k, log_importance_weights, log_probs, tokenize

CODE = "def return class import self value list dict none true false lambda yield".split()
PROSE = "the river mountain sun evening bird song garden quiet light morning walk".split()


def _docs(vocab: list[str], n: int, seed: int, length: int = 30) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(vocab, length)) for _ in range(n)]


def test_tokenize_and_stable_hash():
    assert tokenize("Hello, World's end!") == ["hello", ",", "world", "'", "s", "end", "!"]
    assert bucket_of("hello world", 10_000) == bucket_of("hello world", 10_000)
    assert 0 <= bucket_of("x", 7) < 7


def test_hashed_counts_of_unigrams_and_bigrams():
    c = hashed_ngrams(["a b a", ""], num_buckets=10_000)
    assert len(c) == 2 and c.indptr.tolist()[-1] == c.indptr.tolist()[1]  # the empty doc has no entries
    total = c.total()
    # unigrams a, b, a and bigrams "a b", "b a": five counts in all
    assert total.sum() == 5 and total[bucket_of("a", 10_000)] >= 2
    assert c.doc_dot(np.ones(10_000)).tolist() == [5.0, 0.0]
    with pytest.raises(TypeError, match="sequence of strings"):
        hashed_ngrams("just one string")


def test_log_weight_is_count_weighted_log_ratio():
    raw = hashed_ngrams(["x y"], num_buckets=16)
    lp, lq = np.log(np.full(16, 1 / 16)), np.log(np.full(16, 1 / 32))
    lq[0] = np.log(1 / 2)
    w = log_importance_weights(raw, lp, lq)
    want = sum(cnt * (lp[b] - lq[b]) for b, cnt in zip(raw.buckets, raw.counts))
    assert w[0] == pytest.approx(want)


def test_gumbel_top_k_follows_weights_and_seed():
    log_w = np.log(np.r_[np.full(10, 100.0), np.full(90, 1.0)])
    picks = np.concatenate([gumbel_top_k(log_w, 10, seed=s) for s in range(20)])
    assert (picks < 10).mean() > 0.8  # 10 heavy items dominate
    assert gumbel_top_k(log_w, 10, seed=3).tolist() == gumbel_top_k(log_w, 10, seed=3).tolist()
    assert len(set(gumbel_top_k(log_w, 50, seed=1).tolist())) == 50  # without replacement


def test_dsir_picks_target_domain_far_above_base_rate_with_kl_reduction():
    pool = _docs(CODE + PROSE[:3], 40, seed=0) + _docs(PROSE + CODE[:3], 160, seed=1)  # 20% code-like
    target = _docs(CODE, 30, seed=2)
    res = dsir(pool, target, num_to_select=40, seed=0)
    frac = float((res.kept < 40).float().mean())
    assert frac >= 0.9  # base rate 0.2
    red = kl_reduction(hashed_ngrams(target), hashed_ngrams(pool), res.kept.numpy())
    assert red > 0
    again = dsir(pool, target, num_to_select=40, seed=0)
    assert again.kept.tolist() == res.kept.tolist()
    assert res.log_weights[:40].mean() > res.log_weights[40:].mean()


def test_dsir_rejects_bad_input():
    with pytest.raises(ValueError, match="at most the raw pool size"):
        dsir(["a b"], ["a"], num_to_select=2)
    with pytest.raises(ValueError, match="num_to_select must be an integer >= 1"):
        dsir(["a b"], ["a"], num_to_select=0)
    with pytest.raises(ValueError, match="alpha"):
        dsir(["a b"], ["a"], num_to_select=1, alpha=0)


def test_log_probs_are_normalised():
    lp = log_probs(np.array([0.0, 3.0, 1.0]), alpha=1.0)
    np.testing.assert_allclose(np.exp(lp), [1 / 7, 4 / 7, 2 / 7])
