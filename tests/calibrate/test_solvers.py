"""Calibrated solvers on one Linear with fixed inputs: formulas, exact sparsity, error ordering."""

import pytest
import torch

from prunekit.calibrate.solvers import (
    CholeskyError,
    damped_inverse_factor,
    dsnot,
    magnitude,
    reconstruction_error,
    row_keep_counts,
    sparsegpt,
    wanda,
)
from prunekit.calibrate.stats import LayerStats, stats_from_inputs
from prunekit.patterns import NM, Unstructured, mask_respects


@pytest.fixture(scope="module")
def layer():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(24, 64, generator=g)
    scale = torch.rand(64, generator=g) * 3 + 0.1  # features of very different size, as in LLMs
    X = torch.randn(3, 40, 64, generator=g) * scale + 0.3 * torch.randn(64, generator=g)
    return W, X, stats_from_inputs(X)


def test_stats_are_the_sums_they_claim(layer):
    _, X, st = layer
    x = X.reshape(-1, 64)
    assert torch.allclose(st.H, x.t() @ x, rtol=1e-4, atol=1e-3)
    assert torch.allclose(st.col_norm, x.norm(dim=0), rtol=1e-5)
    assert torch.allclose(st.mean, x.mean(0), atol=1e-5)
    assert torch.allclose(st.var, x.var(0, unbiased=False), rtol=1e-3, atol=1e-4)
    assert st.n_tokens == 120 and st.n_seqs == 3 and st.seq_len == 40


def test_wanda_mask_equals_the_formula(layer):
    W, X, st = layer
    S = W.abs() * X.reshape(-1, 64).norm(dim=0)  # |W_ij| * ||X_j||_2
    _, mask = wanda(W, st, 0.5)
    expect = torch.zeros_like(mask)
    for i in range(W.shape[0]):  # each output row keeps its 32 highest scores
        expect[i, S[i].argsort(descending=True)[:32]] = True
    assert torch.equal(mask, expect)


def test_wanda_nm_keeps_best_two_of_four(layer):
    W, X, st = layer
    S = W.abs() * X.reshape(-1, 64).norm(dim=0)
    _, mask = wanda(W, st, None, NM(2, 4))
    top2 = S.reshape(24, 16, 4).argsort(-1, descending=True)[..., :2]
    expect = torch.zeros(24, 16, 4, dtype=torch.bool).scatter_(-1, top2, True).reshape(24, 64)
    assert torch.equal(mask, expect)


def test_wanda_statistic_is_the_reference_running_mean():
    # the reference code (and llm-compressor) update a running mean one sequence at a time:
    # S <- S n / (n + 1); n <- n + 1; S <- S + ||x_j||^2 / n, with x one sequence's (seq, in) inputs
    g = torch.Generator().manual_seed(3)
    X = torch.randn(5, 7, 6, generator=g) * torch.rand(6, generator=g)
    ref, n = torch.zeros(6), 0
    for x in X:
        ref *= n / (n + 1)
        n += 1
        ref += torch.norm(x.t(), p=2, dim=1) ** 2 / n
    st = LayerStats(6, frozenset({"norms"}))
    st.add(X[:2])  # batches of 2, 1 and 2 sequences: the same float order as one at a time
    st.add(X[2])
    st.add(X[3:])
    assert torch.equal(st.msq, ref)
    assert torch.allclose(st.msq, X.reshape(-1, 6).pow(2).sum(0) / 5, rtol=1e-5)  # = ||X_j||^2 / n_seqs
    hand = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # one 2-token sequence, then one 1-token sequence
    st2 = LayerStats(2, frozenset({"norms"}))
    st2.add(hand)
    st2.add(torch.tensor([[2.0, 0.0]]))
    assert torch.allclose(st2.msq, torch.tensor([(10 + 4) / 2, (20 + 0) / 2]))


def test_wanda_ties_prune_the_lower_index_first():
    W = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 3.0, 2.0, 1.0]])  # row 0: four equal scores
    st = stats_from_inputs(torch.ones(1, 3, 4))
    _, mask = wanda(W, st, 0.5)
    assert mask.tolist() == [[False, False, True, True], [True, True, False, False]]


def test_rows_prune_lowest_is_the_stable_sort_selection():
    from prunekit.calibrate.solvers import rows_prune_lowest

    g = torch.Generator().manual_seed(0)
    for trial in range(100):
        rows, cols = int(torch.randint(1, 9, (1,), generator=g)), int(torch.randint(2, 17, (1,), generator=g))
        S = torch.randint(0, 4, (rows, cols), generator=g).float()  # many ties
        keep = torch.randint(0, cols + 1, (1,), generator=g).repeat(rows)
        if trial % 2:  # per-row counts one apart, as row_keep_counts gives
            keep = (keep - torch.arange(rows) % 2).clamp(0, cols)
        order = torch.sort(S, dim=1, stable=True).indices  # the reference: prune the first cols - keep
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(cols).expand_as(order))
        assert torch.equal(rows_prune_lowest(S, keep), rank >= (cols - keep)[:, None]), (S, keep)


def test_row_keep_counts_exact():
    k = row_keep_counts(7, 10, 0.35)
    assert k.sum() == round(0.65 * 70) and int(k.max() - k.min()) <= 1


@pytest.mark.parametrize("s", [0.3, 0.5, 0.77])
@pytest.mark.parametrize("solver", ["magnitude", "magnitude_row", "wanda", "sparsegpt"])
def test_exact_sparsity_and_zeros(layer, solver, s):
    W, _, st = layer
    fn = {"magnitude": lambda: magnitude(W, st, s), "magnitude_row": lambda: magnitude(W, st, s, scope="row"),
          "wanda": lambda: wanda(W, st, s), "sparsegpt": lambda: sparsegpt(W, st, s, blocksize=16)}[solver]
    W_new, mask = fn()
    assert mask.dtype == torch.bool and mask.shape == W.shape
    assert int(mask.sum()) == round((1 - s) * W.numel())
    assert torch.all(W_new[~mask] == 0)


@pytest.mark.parametrize("pattern,s", [(Unstructured(), 0.5), (NM(2, 4), None)])
def test_sparsegpt_error_below_wanda_and_magnitude(layer, pattern, s):
    W, _, st = layer
    errs = {}
    for name, (W_new, mask) in {"magnitude": magnitude(W, st, s, pattern), "wanda": wanda(W, st, s, pattern),
                                "sparsegpt": sparsegpt(W, st, s, pattern, blocksize=32)}.items():
        assert mask_respects(mask, pattern)
        errs[name] = reconstruction_error(W, W_new, st.H)
    assert errs["sparsegpt"] < errs["wanda"] < errs["magnitude"], errs


def test_reconstruction_error_is_the_output_error(layer):
    W, X, st = layer
    W_new, _ = wanda(W, st, 0.5)
    x = X.reshape(-1, 64)
    direct = ((x @ (W - W_new).t()) ** 2).sum() / ((x @ W.t()) ** 2).sum()
    assert reconstruction_error(W, W_new, st.H) == pytest.approx(float(direct), rel=1e-4)


def test_sparsegpt_with_fixed_mask_keeps_it_and_beats_plain_masking(layer):
    W, _, st = layer
    _, mask = wanda(W, st, 0.5)
    W_new, mask2 = sparsegpt(W, st, 0.5, mask=mask)
    assert torch.equal(mask, mask2)
    assert reconstruction_error(W, W_new, st.H) < reconstruction_error(W, W * mask, st.H)


def test_sparsegpt_nm_needs_blocksize_multiple(layer):
    W, _, st = layer
    with pytest.raises(ValueError, match="blocksize"):
        sparsegpt(W, st, None, NM(2, 4), blocksize=6)


def test_nm_must_divide_inputs():
    W = torch.randn(4, 10)
    st = stats_from_inputs(torch.randn(5, 10))
    with pytest.raises(ValueError, match="multiple of 4"):
        wanda(W, st, None, NM(2, 4))


def test_cholesky_escalates_then_raises():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 8, generator=g)
    H = x.t() @ x  # rank 3 of 8: singular, only dampening makes it positive-definite
    H0 = H.clone()
    with pytest.raises(CholeskyError):
        damped_inverse_factor(H, percdamp=1e-12, escalations=0)
    assert torch.equal(H, H0)  # the dampening written into H's diagonal is undone exactly, also on error
    U, used = damped_inverse_factor(H, percdamp=1e-12, escalations=12)
    assert torch.isfinite(U).all() and used > 1e-12  # succeeded only after escalating
    assert torch.equal(H, H0)
    # on a well-conditioned H, U is the upper Cholesky factor of (H + λI)^-1, λ = 0.01 * mean(diag H)
    x = torch.randn(32, 8, generator=g)
    H = x.t() @ x
    U, used = damped_inverse_factor(H, percdamp=0.01)
    Hd = H.double() + 0.01 * float(H.diagonal().mean()) * torch.eye(8, dtype=torch.float64)
    assert used == 0.01 and torch.equal(U, U.triu())
    torch.testing.assert_close(U.T.double() @ U.double(), torch.linalg.inv(Hd), rtol=1e-4, atol=1e-6)
    with pytest.raises(CholeskyError, match="percdamp"):
        damped_inverse_factor(-torch.eye(8), percdamp=0.01, escalations=3)
    with pytest.raises(CholeskyError, match="NaN"):
        damped_inverse_factor(torch.full((4, 4), float("nan")))


def test_sparsegpt_raises_instead_of_falling_back():
    W = torch.randn(4, 8)
    st = LayerStats(8, frozenset({"hessian"}))
    st.H = -torch.eye(8)
    with pytest.raises(CholeskyError):
        sparsegpt(W, st, 0.5, escalations=2)


@pytest.mark.parametrize("pattern,s", [(Unstructured(), 0.5), (NM(2, 4), None)])
def test_dsnot_keeps_counts_and_shrinks_the_mean_shift(layer, pattern, s):
    W, _, st = layer
    _, mask = wanda(W, st, s, pattern)
    new = dsnot(W, mask, st, pattern, max_cycles=20, threshold=0.0)
    assert torch.equal(new.sum(1), mask.sum(1))
    assert mask_respects(new, pattern)
    c = W * (st.mean * st.seq_len)
    before, after = (c * ~mask).sum(1).abs(), (c * ~new).sum(1).abs()
    assert torch.all(after <= before + 1e-4) and after.sum() < before.sum()


def test_dsnot_threshold_stops_early(layer):
    W, _, st = layer
    _, mask = wanda(W, st, 0.5)
    assert torch.equal(dsnot(W, mask, st, threshold=1e9), mask)


def test_bad_arguments(layer):
    W, _, st = layer
    with pytest.raises(ValueError, match="sparsity"):
        wanda(W, st, 1.0)
    with pytest.raises(ValueError, match="scope"):
        magnitude(W, st, 0.5, scope="global")
    with pytest.raises(ValueError, match="Hessian"):
        sparsegpt(W, stats_from_inputs(torch.randn(4, 64), needs={"norms"}), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        wanda(torch.full((2, 4), float("nan")), stats_from_inputs(torch.randn(3, 4)), 0.5)



def test_finiteness_check_without_a_full_size_temporary():
    from prunekit.calibrate.solvers import _all_finite

    assert _all_finite(torch.full((4, 4), 3e38))  # finite entries whose float32 sum overflows
    assert _all_finite(torch.full((3,), 6e4, dtype=torch.float16))
    assert not _all_finite(torch.tensor([1.0, float("nan")]))
    assert not _all_finite(torch.tensor([float("inf"), -float("inf")]))  # sum is NaN
    assert not _all_finite(torch.tensor([3e38, 3e38, float("inf")]))
