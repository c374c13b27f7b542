"""ALPS: exact sparsity, N:M, the PCG refit solves the normal equations, lower error than SparseGPT."""

from __future__ import annotations

import torch

from prunekit.calibrate import solvers as S
from prunekit.calibrate.stats import LayerStats
from prunekit.patterns import NM


def layer(out: int = 24, cols: int = 32, tokens: int = 256, seed: int = 0) -> tuple[torch.Tensor, LayerStats]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, cols, generator=g) @ torch.randn(cols, cols, generator=g) * 0.3  # correlated inputs
    X[:, :3] *= 8  # a few outlier features, as LLM activations have
    st = LayerStats(cols, needs=frozenset({"hessian"}))
    st.H = X.T @ X
    return torch.randn(out, cols, generator=g), st


def test_alps_exact_count_and_nm():
    W, st = layer()
    W_new, mask = S.alps(W, st, 0.7)
    assert int(mask.sum()) == round(0.3 * W.numel()) and torch.equal(W_new != 0, mask & (W_new != 0))
    assert int((W_new[~mask] != 0).sum()) == 0
    _, m24 = S.alps(W, st, None, NM(2, 4))
    assert torch.equal(m24.reshape(-1, 4).sum(1), torch.full((W.numel() // 4,), 2))


def test_pcg_refit_matches_the_direct_solve_per_row():
    W, st = layer(out=4, cols=12)
    H = st.H / st.H.diagonal().mean() + 0.01 * torch.eye(12)
    keep = torch.rand(4, 12, generator=torch.Generator().manual_seed(5)) > 0.5
    got = S.pcg_on_support(W, H, keep, iters=200, tol=1e-10)
    for i in range(4):
        s = keep[i]
        want = torch.linalg.solve(H[s][:, s], (W[i] @ H)[s])  # (H_SS) w_S = (H w0)_S
        assert torch.allclose(got[i, s], want, atol=1e-3)
        assert torch.all(got[i, ~s] == 0)


def test_alps_beats_sparsegpt_on_reconstruction_at_70_percent():
    W, st = layer(out=64, cols=64)
    err_alps = S.reconstruction_error(W, S.alps(W, st, 0.7)[0], st.H)
    err_sgpt = S.reconstruction_error(W, S.sparsegpt(W, st, 0.7)[0], st.H.clone())
    assert err_alps < err_sgpt
