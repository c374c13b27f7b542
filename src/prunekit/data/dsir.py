"""DSIR: data selection with importance resampling on hashed n-grams (Xie et al. 2023, "Data Selection for
Language Models via Importance Resampling").

Each document becomes counts ``c(x)`` of its lower-cased unigrams and bigrams hashed into ``B = 10,000``
buckets. Two bag-of-n-grams models are fitted (target ``p``, raw pool ``q``, add-``alpha`` smoothing);
``log w(x) = sum_b c_b(x) (log p_b - log q_b)`` (Sec. 4, Eq. 2). ``k`` documents are resampled without
replacement by the Gumbel top-k trick: the ``k`` largest ``log w + G``, ``G ~ Gumbel(0, 1)`` (seeded).
``kl_reduction`` is the paper's data metric (Sec. 6): ``KL(p || q_random) - KL(p || q_selected)``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .checks import check_nonneg_float, check_positive_int

TOKEN = re.compile(r"\w+|[^\w\s]+")
NUM_BUCKETS = 10_000


def tokenize(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens (the split of NLTK's ``WordPunctTokenizer``)."""
    return TOKEN.findall(text.lower())


def bucket_of(gram: str, num_buckets: int) -> int:
    """Stable hash bucket of an n-gram (blake2b, independent of ``PYTHONHASHSEED``)."""
    return int.from_bytes(hashlib.blake2b(gram.encode(), digest_size=8).digest(), "little") % num_buckets


@dataclass
class NgramCounts:
    """Hashed n-gram counts of ``N`` documents in CSR form: document ``i`` owns ``buckets[indptr[i]:indptr[i+1]]``."""

    indptr: np.ndarray  # (N + 1,)
    buckets: np.ndarray  # (nnz,) bucket ids
    counts: np.ndarray  # (nnz,) counts
    num_buckets: int

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def doc_dot(self, v: np.ndarray) -> np.ndarray:
        """``sum_b c_b(x) v_b`` for every document ``(N,)``."""
        per_entry = self.counts * v[self.buckets]
        return np.add.reduceat(np.r_[per_entry, 0.0], self.indptr[:-1]) * (np.diff(self.indptr) > 0)

    def total(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Summed counts ``(B,)`` over all documents or the given ``rows``."""
        if rows is None:
            return np.bincount(self.buckets, weights=self.counts, minlength=self.num_buckets)
        row_of = np.repeat(np.arange(len(self)), np.diff(self.indptr))  # (nnz,) document of each entry
        times = np.bincount(np.asarray(rows, np.int64), minlength=len(self))[row_of]
        return np.bincount(self.buckets, weights=self.counts * times, minlength=self.num_buckets)


def hashed_ngrams(docs: Sequence[str], num_buckets: int = NUM_BUCKETS, ngrams: int = 2) -> NgramCounts:
    """Counts of hashed 1..``ngrams``-grams of every document (Xie et al. 2023, Sec. 4)."""
    if isinstance(docs, str) or not all(isinstance(d, str) for d in docs):
        raise TypeError("docs must be a sequence of strings (one document each)")
    b = check_positive_int(num_buckets, "num_buckets")
    n = check_positive_int(ngrams, "ngrams")
    cache: dict[str, int] = {}
    indptr, buckets, counts = [0], [], []
    for text in docs:
        toks = tokenize(text)
        grams = [" ".join(toks[i:i + k]) for k in range(1, n + 1) for i in range(len(toks) - k + 1)]
        ids = np.fromiter((cache[g] if g in cache else cache.setdefault(g, bucket_of(g, b)) for g in grams),
                          dtype=np.int64, count=len(grams))
        u, c = np.unique(ids, return_counts=True)
        buckets.append(u)
        counts.append(c)
        indptr.append(indptr[-1] + len(u))
    return NgramCounts(np.asarray(indptr, np.int64), _cat(buckets, np.int64), _cat(counts, np.float64), b)


def _cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


def log_probs(total: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Log of the add-``alpha`` smoothed bucket distribution ``(B,)``."""
    p = total + alpha
    return np.log(p) - np.log(p.sum())


def log_importance_weights(raw: NgramCounts, log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """``log w(x) = sum_b c_b(x) (log p_b - log q_b)`` per raw document ``(N,)`` (Xie et al. 2023, Eq. 2)."""
    return raw.doc_dot(log_p - log_q)


def gumbel_top_k(log_w: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Sample ``k`` indices without replacement proportionally to ``exp(log_w)`` (Gumbel top-k); sorted."""
    g = np.random.default_rng(seed).gumbel(size=len(log_w))
    keys = log_w + g
    return np.sort(np.argsort(-keys, kind="stable")[:k])


def kl(p_total: np.ndarray, q_total: np.ndarray, alpha: float = 1.0) -> float:
    """``KL(p || q)`` of two smoothed bucket distributions given as counts."""
    lp, lq = log_probs(p_total, alpha), log_probs(q_total, alpha)
    return float((np.exp(lp) * (lp - lq)).sum())


def kl_reduction(target: NgramCounts, raw: NgramCounts, selected: np.ndarray, seed: int = 0) -> float:
    """``KL(p_target || q_random) - KL(p_target || q_selected)`` with a random subset of equal size (Sec. 6)."""
    rnd = np.random.default_rng(seed).choice(len(raw), size=len(selected), replace=False)
    pt = target.total()
    return kl(pt, raw.total(rnd)) - kl(pt, raw.total(selected))


@dataclass
class DSIRResult:
    """Selected raw-document indices (sorted), their log importance weights (all ``N``), parameters."""

    kept: Tensor
    log_weights: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)


def dsir(raw: Sequence[str] | NgramCounts, target: Sequence[str] | NgramCounts, num_to_select: int,
         seed: int = 0, num_buckets: int = NUM_BUCKETS, ngrams: int = 2, alpha: float = 1.0,
         top_k: bool = False) -> DSIRResult:
    """Select ``num_to_select`` raw documents resembling ``target`` by importance resampling (Xie et al. 2023).

    ``top_k=True`` takes the highest weights instead of sampling. Same seed, same selection.
    """
    k = check_positive_int(num_to_select, "num_to_select")
    a = check_nonneg_float(alpha, "alpha")
    if a == 0:
        raise ValueError("alpha (smoothing) must be > 0 so every bucket has a finite log-probability")
    rc = raw if isinstance(raw, NgramCounts) else hashed_ngrams(raw, num_buckets, ngrams)
    tc = target if isinstance(target, NgramCounts) else hashed_ngrams(target, num_buckets, ngrams)
    if k > len(rc):
        raise ValueError(f"num_to_select must be at most the raw pool size ({len(rc)}), got {k}")
    if rc.num_buckets != tc.num_buckets:
        raise ValueError(f"raw and target use {rc.num_buckets} and {tc.num_buckets} buckets; they must match")
    log_w = log_importance_weights(rc, log_probs(tc.total(), a), log_probs(rc.total(), a))
    idx = np.sort(np.argsort(-log_w, kind="stable")[:k]) if top_k else gumbel_top_k(log_w, k, seed)
    params = {"num_to_select": k, "seed": seed, "num_buckets": rc.num_buckets, "ngrams": ngrams, "alpha": a,
              "top_k": top_k}
    return DSIRResult(torch.from_numpy(idx), log_w, params)
