"""Per-layer input statistics gathered from calibration activations, always in float32."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

NEEDS = ("hessian", "norms", "moments")


@dataclass
class LayerStats:
    """Running sums over the calibration tokens ``x`` (rows of X, shape ``(tokens, in)``) of one layer.

    ``sq`` = sum_t x_tj^2, ``s1`` = sum_t x_tj, ``H`` = sum_t x_t x_t^T (the SparseGPT Hessian up to a
    factor 2), ``n_tokens`` and ``n_seqs`` count what was added. Which sums exist is set by ``needs`` (``sq`` only
    with ``moments``: with ``norms`` alone ``col_norm`` comes from ``msq``, which saves squaring every batch).

    ``msq`` (with ``norms``) is Wanda's statistic as its reference code accumulates it (Sun et al. 2024,
    ``WrappedGPT.add_batch``; llm-compressor's ``accumulate_row_scalars`` is the same): a running mean over
    calibration sequences of each sequence's ||x_j||_2^2, updated one sequence at a time in the order they
    were added (S <- S n / (n + 1); n <- n + 1; S <- S + ||x_j||^2 / n). It equals ``sq / n_seqs`` up to
    rounding and ranks the weights of a row exactly as Eq. 1 does; kept in this float order so that Wanda's
    masks are bit-for-bit those of the reference code fed the same activations (a last-bit difference flips
    near-ties, and a flip in one block changes every later block's inputs).
    """

    cols: int
    needs: frozenset[str] = frozenset({"norms"})
    n_tokens: int = 0
    n_seqs: int = 0
    sq: Tensor | None = None  # (in,)
    s1: Tensor | None = None  # (in,)
    H: Tensor | None = None  # (in, in)
    msq: Tensor | None = None  # (in,) Wanda's running mean over sequences of ||x_j||^2 (see above)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        bad = set(self.needs) - set(NEEDS)
        if bad:
            raise ValueError(f"needs must be a subset of {NEEDS}, got {sorted(bad)}")
        z = lambda *s: torch.zeros(*s, dtype=torch.float32, device=self.device)  # noqa: E731
        if "moments" in self.needs:  # with norms alone, ||X_j||^2 = msq_j * n_seqs (no (T, in) square per batch)
            self.sq = z(self.cols)
        if "norms" in self.needs:
            self.msq = z(self.cols)
        if "moments" in self.needs:
            self.s1 = z(self.cols)
        if "hessian" in self.needs:
            self.H = z(self.cols, self.cols)

    def add(self, x: Tensor) -> None:
        """Add a batch of inputs shaped ``(..., seq, in)`` (a 2-D input counts as one sequence)."""
        n_seqs = 1 if x.dim() <= 2 else int(x.shape[:-2].numel())
        x = x.detach().to(device=self.device, dtype=torch.float32)
        if x.shape[-1] != self.cols:
            raise ValueError(f"layer input has {x.shape[-1]} features, expected {self.cols}")
        if self.msq is not None:
            n = self.n_seqs
            for seq in x.reshape(n_seqs, -1, self.cols):  # (seq, in), one sequence at a time
                self.msq *= n / (n + 1)
                n += 1
                self.msq += torch.norm(seq.t(), p=2, dim=1) ** 2 / n
        if self.sq is not None or self.s1 is not None or self.H is not None:
            x = x.reshape(-1, self.cols)  # (T, in)
        if self.sq is not None:
            self.sq += (x * x).sum(0)
        if self.s1 is not None:
            self.s1 += x.sum(0)
        if self.H is not None:
            self.H.addmm_(x.t(), x)
        self.n_tokens += x.numel() // self.cols
        self.n_seqs += n_seqs

    @property
    def col_norm(self) -> Tensor:
        """||X_j||_2 over all calibration tokens, shape ``(in,)`` (from ``sq``, or ``msq`` times the sequences)."""
        if self.sq is not None:
            return self.sq.sqrt()
        if self.msq is None:
            raise ValueError("these statistics were gathered without 'norms'")
        return (self.msq * self.n_seqs).sqrt()

    @property
    def mean(self) -> Tensor:
        """Token mean of each input feature, shape ``(in,)``."""
        if self.s1 is None:
            raise ValueError("these statistics were gathered without 'moments'")
        return self.s1 / max(self.n_tokens, 1)

    @property
    def var(self) -> Tensor:
        """Token variance of each input feature (population), shape ``(in,)``."""
        m = self.mean
        return (self.sq / max(self.n_tokens, 1) - m * m).clamp_min(0.0)

    @property
    def seq_len(self) -> float:
        """Mean tokens per calibration sequence."""
        return self.n_tokens / max(self.n_seqs, 1)

    def to(self, device: torch.device | str) -> LayerStats:
        """The same statistics on ``device`` (a copy when the device differs)."""
        device = torch.device(device)
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        out = LayerStats.__new__(LayerStats)
        out.__dict__.update(self.__dict__, sq=mv(self.sq), s1=mv(self.s1), H=mv(self.H), msq=mv(self.msq),
                            device=device)
        return out


def stats_from_inputs(x: Tensor, needs: frozenset[str] | set[str] = frozenset(NEEDS)) -> LayerStats:
    """Statistics of a fixed input batch ``x`` shaped ``(..., in)`` (a helper for tests and one-off use)."""
    st = LayerStats(cols=x.shape[-1], needs=frozenset(needs), device=x.device)
    st.add(x)
    return st
