"""Calibrated solvers: pure functions ``(W, stats, sparsity, pattern) -> (W_new, mask)`` on tensors.

``W`` is a Linear weight ``(out, in)`` (rows = outputs, columns = inputs); masks are ``torch.bool``
with ``True`` = keep; every solver works in float32 and returns ``W_new = W' ⊙ mask`` in float32.
Unstructured sparsity is exact per layer: ``round((1 - s) * numel)`` weights are kept; per-row
solvers spread that count over the rows (rows differ by at most one weight). N:M keeps exactly
``n`` of every ``m`` consecutive inputs of every row.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from ..patterns import NM, Pattern, Unstructured, keep_count, nm_mask, pattern_sparsity, topk_mask
from .stats import LayerStats

log = logging.getLogger(__name__)
PATTERNS = "Unstructured() or NM(n, m)"


class CholeskyError(RuntimeError):
    """The dampened Hessian stayed non positive-definite after every escalation of the dampening."""


def _check(W: Tensor, sparsity: float | None, pattern: Pattern, name: str) -> float:
    """Validate the common solver arguments; return the sparsity the pattern reaches."""
    if not torch.is_tensor(W) or W.dim() != 2:
        raise ValueError(f"W of {name} must be a 2-D weight (out, in), got {getattr(W, 'shape', type(W))}")
    if not isinstance(pattern, (Unstructured, NM)):
        raise ValueError(f"pattern for calibrated solvers must be {PATTERNS}, got {pattern!r}")
    s = pattern_sparsity(pattern, sparsity)
    if isinstance(pattern, NM) and W.shape[1] % pattern.m:
        raise ValueError(
            f"pattern {pattern} needs the input dimension of {name} to be a multiple of {pattern.m}, "
            f"but it is {W.shape[1]} (shape {list(W.shape)})"
        )
    if not _all_finite(W):
        raise ValueError(f"weight {name} contains NaN or Inf values")
    return s


def row_keep_counts(rows: int, cols: int, sparsity: float) -> Tensor:
    """Keep count of each row, summing exactly to ``round((1 - s) * rows * cols)``; shape ``(rows,)``."""
    K = keep_count(rows * cols, sparsity)
    edges = torch.round(torch.arange(rows + 1, dtype=torch.float64) * (K / rows)).long()
    return edges[1:] - edges[:-1]


def row_topk_mask(S: Tensor, k: Tensor) -> Tensor:
    """Keep the ``k[i]`` highest scores of row ``i`` (ties to the lower index); ``S`` is ``(rows, cols)``.

    A selection, not a sort: the k-th largest score of each row (``kthvalue``, about 3x faster than a
    stable argsort on CPU), everything above it, then the ties at it from the lowest index on.
    """
    k = k.to(S.device)
    mask = torch.zeros_like(S, dtype=torch.bool)
    for kk in k.unique().tolist():  # per-row counts differ by at most one: one or two groups
        rows = (k == kk).nonzero().squeeze(1) if (k != kk).any() else None
        mask_rows = _rows_keep_top(S if rows is None else S[rows], int(kk))
        if rows is None:
            return mask_rows
        mask[rows] = mask_rows
    return mask


def _rows_keep_top(S: Tensor, k: int) -> Tensor:
    """Keep the ``k`` highest scores of every row of ``S`` ``(rows, cols)``, ties to the lower index."""
    if k <= 0 or k >= S.shape[1]:
        return torch.full_like(S, k > 0, dtype=torch.bool)
    thr = torch.kthvalue(S, S.shape[1] - k + 1, dim=1, keepdim=True).values  # (rows, 1): the k-th largest
    above = S > thr
    tied = S == thr
    need = k - above.sum(1, keepdim=True)  # (rows, 1) ties still to keep
    return above | (tied & (tied.cumsum(1) <= need))


def per_row_mask(S: Tensor, sparsity: float, pattern: Pattern) -> Tensor:
    """Scores compared within each output row (N:M within each group of ``m``)."""
    if isinstance(pattern, NM):
        return nm_mask(S, pattern.n, pattern.m)
    return row_topk_mask(S, row_keep_counts(S.shape[0], S.shape[1], sparsity))


# ----------------------------------------------------------------------------------------------
# magnitude and Wanda


def magnitude(W: Tensor, stats: LayerStats | None, sparsity: float | None, pattern: Pattern = Unstructured(),
              scope: str = "layer", name: str = "weight") -> tuple[Tensor, Tensor]:
    """Magnitude pruning |W_ij| (Han et al. 2015), one threshold per layer or per output row."""
    s = _check(W, sparsity, pattern, name)
    if scope not in ("layer", "row"):
        raise ValueError(f"scope must be 'layer' or 'row', got {scope!r}")
    W = W.float()
    S = W.abs()  # (out, in)
    mask = topk_mask(S, s, pattern, name=name) if scope == "layer" else per_row_mask(S, s, pattern)
    return W * mask, mask


def wanda_scores(W: Tensor, stats: LayerStats) -> Tensor:
    """Wanda score S_ij = |W_ij| * ||X_j||_2 (Sun et al. 2024, arXiv 2306.11695, Eq. 1); ``(out, in)``."""
    return W.float().abs() * stats.col_norm.to(W.device)[None, :]


def wanda(W: Tensor, stats: LayerStats, sparsity: float | None, pattern: Pattern = Unstructured(),
          name: str = "weight") -> tuple[Tensor, Tensor]:
    """Wanda (Sun et al. 2024, Eq. 1): prune the lowest |W_ij| * ||X_j||_2 within each output row.

    Computed as the reference code does, so that the masks match it bit for bit on the same activations:
    S_ij = |W_ij| sqrt(msq_j) (``LayerStats.msq``, the same order as Eq. 1 within a row) and, unstructured,
    a stable ascending sort of each row whose first ``cols - keep`` entries are pruned (ties: the lower
    column index is pruned first). N:M keeps the ``n`` highest of each group (``nm_mask``).
    """
    s = _check(W, sparsity, pattern, name)
    W = W.float()
    msq = stats.msq if stats.msq is not None else stats.col_norm ** 2
    S = W.abs() * torch.sqrt(msq.to(W.device).reshape(1, -1))
    if isinstance(pattern, NM):
        mask = nm_mask(S, pattern.n, pattern.m)
    else:
        mask = rows_prune_lowest(S, row_keep_counts(S.shape[0], S.shape[1], s))
    return W * mask, mask


def rows_prune_lowest(S: Tensor, keep: Tensor) -> Tensor:
    """Keep mask that prunes the ``cols - keep[i]`` lowest scores of row ``i``, ties at the boundary pruned from
    the lower index on: the first ``cols - keep[i]`` entries of a stable ascending sort, as Wanda's reference
    code selects. The pruned set is the ``cols - keep[i]`` highest of ``-S`` with ties to the lower index, i.e.
    ``row_topk_mask`` (a ``kthvalue`` selection, about 3x faster than the sort on CPU)."""
    return ~row_topk_mask(-S, S.shape[1] - keep)


# ----------------------------------------------------------------------------------------------
# SparseGPT


def _all_finite(x: Tensor) -> bool:
    """Whether every entry is finite, without a temporary of ``x``'s size: a sum with a NaN or Inf in
    it is not finite, so a finite sum settles it; only when the sum overflows are the entries checked,
    a million at a time."""
    if bool(torch.isfinite(x.sum())):
        return True
    return all(bool(torch.isfinite(c).all()) for c in x.reshape(-1).split(1 << 20))


def damped_inverse_factor(H: Tensor, percdamp: float = 0.01, escalations: int = 4,
                          name: str = "weight") -> tuple[Tensor, float]:
    """Upper Cholesky factor U of (H + λI)^-1 with λ = percdamp * mean(diag H) (SparseGPT, Sec. 3.2).

    On failure the dampening grows tenfold up to ``escalations`` times; if it still fails,
    ``CholeskyError`` is raised (never a silent fallback). Returns ``(U, percdamp_used)``.

    Memory: at most one (in, in) matrix besides ``H`` (the largest layer of a 1B model has a 127 MB
    Hessian): the dampening is written into ``H``'s diagonal and the original diagonal is copied back
    exactly before returning (also on error), and the inverse and its factor overwrite the Cholesky
    factor in place. The factor is stored column-major (LAPACK's layout), so no call makes a hidden copy.
    """
    if not _all_finite(H):
        raise CholeskyError(f"the Hessian of {name} contains NaN or Inf (check the calibration activations)")
    original = H.diagonal().clone()
    dead = original == 0  # inputs that are always zero: unit curvature, their weights do not matter
    diag = torch.where(dead, torch.ones_like(original), original)
    mean_diag = float(diag.mean())
    tried = []
    info = torch.empty((), dtype=torch.int32, device=H.device)
    try:
        for step in range(escalations + 1):
            pd = percdamp * 10**step
            H.diagonal().copy_(diag + pd * mean_diag)
            # column-major output: LAPACK works in it directly; a row-major one costs a hidden (in, in) copy
            L, _ = torch.linalg.cholesky_ex(H, out=(torch.empty_like(H).mT, info))
            H.diagonal().copy_(original)
            if int(info) == 0:
                torch.cholesky_inverse(L, out=L)  # (H + λI)^-1, in place
                U, _ = torch.linalg.cholesky_ex(L, upper=True, out=(L, info))  # in place
                if int(info) == 0 and _all_finite(U):
                    if step:
                        log.warning("%s: Cholesky needed dampening %.3g (asked %.3g)", name, pd, percdamp)
                    return U, pd
            del L
            tried.append(pd)
    finally:
        H.diagonal().copy_(original)
    raise CholeskyError(
        f"Cholesky of the dampened Hessian of {name} failed with percdamp {tried}: the Hessian is not "
        "positive-definite (more or more varied calibration samples, or a larger percdamp, may help)"
    )


def _block_prune_counts(rows: int, cols: int, sparsity: float, blocksize: int) -> list[int]:
    """Pruned weights per column block, summing exactly to the layer's pruned count."""
    P = rows * cols - keep_count(rows * cols, sparsity)
    ends = list(range(blocksize, cols, blocksize)) + [cols]
    cum = [round(P * e / cols) for e in ends]
    return [c - p for c, p in zip(cum, [0] + cum[:-1])]


def _lowest_k(S: Tensor, k: int) -> Tensor:
    """Bool mask of the ``k`` lowest entries of ``S`` (ties to the lower flat index).

    A selection (``kthvalue``), not a sort: the entries below the k-th lowest, then the ties at it from
    the lowest flat index on.
    """
    flat = S.reshape(-1)
    if k <= 0 or k >= flat.numel():
        return torch.full_like(S, k > 0, dtype=torch.bool)
    thr = torch.kthvalue(flat, k).values
    below, tied = flat < thr, flat == thr
    need = k - below.sum()
    return (below | (tied & (tied.cumsum(0) <= need))).reshape(S.shape)


def _nm_prune(S: Tensor, n_prune: int) -> Tensor:
    """Prune mask of the ``n_prune`` lowest scores in each row of ``S`` (``(rows, m)``)."""
    order = torch.argsort(S, dim=1, stable=True)
    return torch.zeros_like(S, dtype=torch.bool).scatter_(1, order[:, :n_prune], True)


def sparsegpt(W: Tensor, stats: LayerStats, sparsity: float | None, pattern: Pattern = Unstructured(),
              blocksize: int = 128, percdamp: float = 0.01, mask: Tensor | None = None,
              escalations: int = 4, name: str = "weight") -> tuple[Tensor, Tensor]:
    """SparseGPT (Frantar & Alistarh 2023, arXiv 2301.00774, Alg. 1): OBS pruning with lazy block updates.

    Columns are swept left to right; pruning w_ij costs w_ij^2 / U_jj^2 (U = chol((H+λI)^-1), upper)
    and the error (w - q)/U_jj is spread over the columns to its right (Eq. 3-5). Unstructured masks
    are chosen per block of ``blocksize`` columns on the updated weights (exact count per block);
    N:M masks per group of ``m`` columns. A given ``mask`` is kept fixed (reconstruction only).
    """
    s = _check(W, sparsity, pattern, name)
    if stats.H is None:
        raise ValueError(f"sparsegpt needs the Hessian of {name}: gather statistics with needs={{'hessian'}}")
    if not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"blocksize must be a positive integer, got {blocksize!r}")
    if isinstance(pattern, NM) and blocksize % pattern.m:
        raise ValueError(f"blocksize={blocksize} must be a multiple of m={pattern.m} for pattern {pattern}")
    W = W.detach().float().clone()  # (out, in)
    U, _ = damped_inverse_factor(stats.H.to(W.device), percdamp, escalations, name)
    prune = torch.zeros_like(W, dtype=torch.bool) if mask is None else ~mask.to(W.device)
    counts = _block_prune_counts(*W.shape, s, blocksize)
    for b, i1 in enumerate(range(0, W.shape[1], blocksize)):
        i2 = min(i1 + blocksize, W.shape[1])
        d = torch.diag(U)[i1:i2]  # (B,)
        if mask is None and isinstance(pattern, Unstructured):
            prune[:, i1:i2] = _lowest_k(W[:, i1:i2] ** 2 / d[None, :] ** 2, counts[b])
        _sweep_block(W, U, prune, i1, i2, pattern if mask is None else None)
    del U  # (in, in): free it before the last step, which is where the peak memory would otherwise sit
    keep = prune.logical_not_()  # in place: the same buffer now says "keep"
    return W.mul_(keep), keep


def _sweep_block(W: Tensor, U: Tensor, prune: Tensor, i1: int, i2: int, nm: Pattern | None) -> None:
    """One lazy block of SparseGPT, in place on ``W`` and (for N:M) ``prune``."""
    W1 = W[:, i1:i2].clone()  # (out, B)
    U1 = U[i1:i2, i1:i2]  # (B, B)
    Err1 = torch.zeros_like(W1)
    for i in range(i2 - i1):
        if isinstance(nm, NM) and i % nm.m == 0:
            g = slice(i, i + nm.m)
            prune[:, i1 + i : i1 + i + nm.m] = _nm_prune(W1[:, g] ** 2 / torch.diag(U1)[g][None, :] ** 2, nm.m - nm.n)
        w = W1[:, i]
        q = w.masked_fill(prune[:, i1 + i], 0.0)
        err = (w - q) / U1[i, i]  # (out,)
        W1[:, i:].addr_(err, U1[i, i:], alpha=-1.0)  # in place: no (out, B) temporary per column
        W1[:, i] = q
        Err1[:, i] = err
    W[:, i1:i2] = W1
    if i2 < W.shape[1]:
        W[:, i2:].addmm_(Err1, U[i1:i2, i2:], alpha=-1.0)  # the lazy batch update, in place


# ----------------------------------------------------------------------------------------------
# DSnoT


def dsnot(W: Tensor, mask: Tensor, stats: LayerStats, pattern: Pattern = Unstructured(), max_cycles: int = 50,
          threshold: float = 0.1, gamma: float = 1.0, same_sign: bool = True) -> Tensor:
    """DSnoT mask refinement without training (Zhang et al. 2024, arXiv 2310.08915, Sec. 3, Eq. 4-7).

    Per output row r, the expected output shift of pruning is e_r = sum_{j pruned} W_rj * mu_j
    (mu_j: mean over sequences of each sequence's token sum of x_j, as in the reference). While
    |e_r| > ``threshold`` (at most ``max_cycles`` swaps), regrow the pruned weight with the largest
    W_rj mu_j / Var_j^gamma of e_r's sign and prune the lowest-Wanda kept weight of the opposite
    sign (N:M: the lowest-Wanda kept weight of the regrown weight's group). ``same_sign`` also stops
    a row when the swap would flip the sign of e_r (on by default: the reference CLI turns it off by a
    ``type=bool`` quirk, and without it the swaps oscillate). A swap is taken only if it shrinks
    |e_r| (the reference's N:M branch may grow it). Per-row counts (and N:M) are unchanged.
    """
    W = W.detach().float()
    mask = mask.to(W.device)
    keep = mask.clone()
    mu = stats.mean.to(W.device) * stats.seq_len  # (in,)
    c = W * mu[None, :]  # (out, in) expected contribution of each weight
    g = c / stats.var.to(W.device).clamp_min(1e-12) ** gamma
    wanda_s = wanda_scores(W, stats)
    e = (c * ~keep).sum(1)  # (out,)
    e0_sign = torch.sign(e)
    active = e.abs() > threshold
    rows = torch.arange(W.shape[0], device=W.device)
    cand_grow = _grow_order(g, keep)
    nm = pattern if isinstance(pattern, NM) else None
    cand_prune = None if nm else _prune_order(wanda_s, c, keep)
    for _ in range(max_cycles):
        if not bool(active.any()):
            break
        j = cand_grow.next(e > 0, active)  # (out,) regrow index or -1
        k = _group_lowest(wanda_s, keep & mask, j, nm) if nm else cand_prune.next(e < 0, active)
        ok = active & (j >= 0) & (k >= 0)
        js, ks = j.clamp_min(0), k.clamp_min(0)
        e_after = e - c[rows, js] + c[rows, ks]
        ok &= e_after.abs() < e.abs()  # a swap must shrink the error proxy
        if same_sign:
            ok &= torch.sign(e_after) == e0_sign
        keep[rows[ok], js[ok]] = True
        keep[rows[ok], ks[ok]] = False
        e = torch.where(ok, e_after, e)
        active = ok & (e.abs() > threshold)
    return keep


class _Cursor:
    """Per-row sorted candidate lists read from the front (low) or the back (high), each item once."""

    def __init__(self, order: Tensor, n_valid: Tensor, front_ok: Tensor, back_ok: Tensor) -> None:
        self.order, self.rows = order, torch.arange(order.shape[0], device=order.device)
        self.lo = torch.zeros_like(n_valid)
        self.hi = n_valid - 1
        self.front_ok, self.back_ok = front_ok, back_ok  # (out, in) which items each end may take

    def next(self, from_back: Tensor, active: Tensor) -> Tensor:
        """Next index per row (``-1`` when that end is exhausted or the item has the wrong sign)."""
        pos = torch.where(from_back, self.hi, self.lo)
        valid = active & (self.lo <= self.hi)
        idx = self.order[self.rows, pos.clamp(0, self.order.shape[1] - 1)]
        ok_item = torch.where(from_back, self.back_ok[self.rows, idx], self.front_ok[self.rows, idx])
        valid &= ok_item
        self.hi = torch.where(valid & from_back, self.hi - 1, self.hi)
        self.lo = torch.where(valid & ~from_back, self.lo + 1, self.lo)
        return torch.where(valid, idx, torch.full_like(idx, -1))


def _grow_order(g: Tensor, keep: Tensor) -> _Cursor:
    """Pruned weights by ascending g (front: most negative, back: most positive)."""
    key = g.masked_fill(keep, math.inf)
    order = torch.argsort(key, dim=1, stable=True)
    return _Cursor(order, (~keep).sum(1), front_ok=g < 0, back_ok=g > 0)


def _prune_order(wanda_s: Tensor, c: Tensor, keep: Tensor) -> _Cursor:
    """Kept weights: negative contributions by ascending Wanda, then positive ones by descending Wanda.

    e > 0 needs a negative contribution (front); e < 0 a positive one (back, lowest Wanda last).
    """
    big = float(wanda_s.max()) + 1.0
    key = torch.where(c < 0, wanda_s, 3 * big - wanda_s)  # negatives first (asc), positives after (desc)
    key = key.masked_fill(~keep, math.inf)
    order = torch.argsort(key, dim=1, stable=True)
    return _Cursor(order, keep.sum(1), front_ok=c < 0, back_ok=c > 0)


def _group_lowest(wanda_s: Tensor, keep: Tensor, j: Tensor, nm: NM) -> Tensor:
    """Lowest-Wanda weight with ``keep`` in the N:M group of column ``j[r]`` of each row (``-1``: none)."""
    rows = torch.arange(keep.shape[0], device=keep.device)
    start = (j.clamp_min(0) // nm.m) * nm.m
    cols = start[:, None] + torch.arange(nm.m, device=keep.device)[None, :]  # (out, m)
    s = wanda_s[rows[:, None], cols].masked_fill(~keep[rows[:, None], cols], math.inf)
    best, arg = s.min(1)
    k = cols[rows, arg]
    return torch.where((j >= 0) & torch.isfinite(best), k, torch.full_like(k, -1))


# ----------------------------------------------------------------------------------------------
# error


# ----------------------------------------------------------------------------------------------
# ALPS


def _project(Z: Tensor, k: int, pattern: Pattern) -> Tensor:
    """Keep-mask of the projection onto the sparsity set: the ``k`` largest ``|Z|`` of the layer, or N:M."""
    if isinstance(pattern, NM):
        return nm_mask(Z.abs(), pattern.n, pattern.m)
    keep = torch.zeros(Z.numel(), dtype=torch.bool, device=Z.device)
    keep[torch.topk(Z.abs().reshape(-1), k, sorted=False).indices] = True
    return keep.reshape(Z.shape)


def _rho_factor(changed: int, k: int) -> float:
    """ALPS's penalty schedule (Meng et al. 2024, Sec. 3.1): grow rho fast while the support still moves."""
    if changed >= 0.1 * k:
        return 1.3
    return 1.2 if changed >= 0.005 * k else 1.1


def alps_admm(W: Tensor, H: Tensor, k: int, pattern: Pattern, rho0: float = 0.1, iters: int = 300,
              update_every: int = 3) -> Tensor:
    """ALPS's ADMM (Meng et al. 2024, Alg. 1, Eq. 6-8) for ``min ||(W0 - W) X^T||^2, ||W||_0 <= k``; the mask.

    With ``H = X^T X`` normalized to unit mean diagonal, ``V`` the scaled dual and ``D`` the sparse copy:
    ``W = (W0 H - V + rho D)(H + rho I)^-1`` (one eigendecomposition serves every rho),
    ``D = P_k(W + V / rho)``, ``V += rho (W - D)``; every ``update_every`` iterations rho grows by
    1.3 / 1.2 / 1.1 as the support changed by >= 10% / 0.5% / less of ``k``; stops once the support has
    not changed for one period and rho > 10 (D and W then agree on it)."""
    lam, Q = torch.linalg.eigh(H)  # H = Q diag(lam) Q^T
    lam = lam.clamp_min(0)
    W0H = W @ H  # (out, in)
    D, V = W.clone(), torch.zeros_like(W)
    keep = _project(W, k, pattern)
    rho, last = rho0, keep
    for t in range(1, iters + 1):
        Wt = ((W0H - V + rho * D) @ Q) / (lam + rho)[None, :] @ Q.T  # (out, in)
        Z = Wt + V / rho
        keep = _project(Z, k, pattern)
        D = Z * keep
        V = V + rho * (Wt - D)
        if t % update_every == 0:
            changed = int((keep != last).sum())
            if changed == 0 and rho > 10:
                break
            rho *= _rho_factor(changed, k)
            last = keep
    return keep


def pcg_on_support(W0: Tensor, H: Tensor, keep: Tensor, W: Tensor | None = None, iters: int = 50,
                   tol: float = 1e-6) -> Tensor:
    """ALPS's refinement (Meng et al. 2024, Sec. 3.2): minimize ``tr((W0 - W) H (W0 - W)^T)`` over the weights
    on ``keep`` with preconditioned conjugate gradients, all rows at once (Jacobi preconditioner diag H)."""
    m = keep.float()
    W = (W0 * m).clone() if W is None else W * m
    Minv = 1.0 / H.diagonal().clamp_min(1e-12)  # (in,)
    R = ((W0 - W) @ H) * m  # residual = -gradient / 2 on the support
    Z = R * Minv[None, :]
    P = Z.clone()
    rz = (R * Z).sum(1)  # (out,)
    r0 = R.norm()
    for _ in range(iters):
        AP = (P @ H) * m
        alpha = rz / (P * AP).sum(1).clamp_min(1e-30)
        W = W + alpha[:, None] * P
        R = R - alpha[:, None] * AP
        if R.norm() <= tol * r0.clamp_min(1e-30):
            break
        Z = R * Minv[None, :]
        rz_new = (R * Z).sum(1)
        P = Z + (rz_new / rz.clamp_min(1e-30))[:, None] * P
        rz = rz_new
    return W * m


def alps(W: Tensor, stats: LayerStats, sparsity: float | None, pattern: Pattern = Unstructured(),
         rho0: float = 0.1, iters: int = 300, cg_iters: int = 50, percdamp: float = 0.01, mask: Tensor | None = None,
         name: str = "weight") -> tuple[Tensor, Tensor]:
    """ALPS (Meng et al. 2024, arXiv 2406.07831): ADMM with an increasing penalty finds the support, then
    preconditioned CG re-fits the kept weights to the layer's outputs; a given ``mask`` skips the ADMM.

    Unstructured: exactly ``round((1 - s) * numel)`` weights kept per layer; N:M per group of ``m``."""
    s = _check(W, sparsity, pattern, name)
    if stats.H is None:
        raise ValueError(f"alps needs the Hessian of {name}: gather statistics with needs={{'hessian'}}")
    W = W.detach().float()  # (out, in)
    H = stats.H.to(W.device).float()
    diag = H.diagonal()
    scale = float(diag[diag > 0].mean()) if bool((diag > 0).any()) else 1.0
    Hn = H / scale  # unit mean diagonal, so rho0 means the same for every layer
    Hn = Hn + percdamp * torch.eye(Hn.shape[0], device=W.device)  # damping as SparseGPT's
    if mask is None:
        mask = alps_admm(W, Hn, keep_count(W.numel(), s), pattern, rho0, iters)
    keep = mask.to(W.device)
    return pcg_on_support(W, Hn, keep, iters=cg_iters), keep


def reconstruction_error(W: Tensor, W_new: Tensor, H: Tensor, chunk: int = 256) -> float:
    """Relative output error ||(W - W') X||_F^2 / ||W X||_F^2 = tr(ΔW H ΔW^T) / tr(W H W^T), H = X^T X."""
    W, W_new, H = W.float(), W_new.float(), H.float()
    num = den = 0.0
    for r in range(0, W.shape[0], chunk):  # row chunks keep the temporaries small
        Wr = W[r : r + chunk]  # (c, in)
        Dr = Wr - W_new[r : r + chunk]
        num += float(((Dr @ H) * Dr).sum())
        den += float(((Wr @ H) * Wr).sum())
    return num / den if den > 0 else 0.0
