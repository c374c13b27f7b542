"""Data pruning: score every example, select what to keep, train on it.

- ``DynamicsRecorder`` (a ``fit`` callback, or ``update``/``epoch()`` in your own loop) records per-example
  training dynamics into a memmap;
  ``el2n``, ``forgetting``, ``aum``, ``prob_aum``, ``entropy``, ``loss`` come from the recorded runs;
  ``el2n(runs, epoch="auto")`` reads EL2N at ``learned_epoch(runs)`` (training accuracy at 90% of its final).
- ``grand`` (per-example gradient norms with ``torch.func``), ``prototype`` (distance to the nearest
  k-means centroid of embeddings, e.g. of a ``train_contrastive`` SimCLR encoder), ``random``.
  Every score is a difficulty: higher = harder.
- ``select(scores, keep_fraction, rule)`` with rules ``keep-hard``, ``keep-easy``, ``random``,
  ``class-balanced``, ``ccs``, ``dbp``, ``noise-aware`` (drop AUM/loss-flagged examples, then random or
  CCS); ``choose_beta`` / ``choose_flag_fraction`` pick CCS's cut-off / the flagged fraction on a
  validation metric; ``threshold_samples`` + ``aum_threshold`` give AUM's threshold (Pleiss et al.).
- ``semdedup`` (embeddings, streamed), ``dsir`` (text), ``RS2Sampler`` (per-epoch random subsets).
- ``embed`` (any encoder; ``MiniLMEncoder`` for text) over arrays, lists of strings or ``ParquetTexts``
  (a Parquet string column read by row group, larger than memory); ``read_texts`` (.txt / .jsonl / .parquet).
- ``save_selection`` / ``load_selection``: kept indices ``.npy`` plus a JSON manifest.
"""

from .cluster import Clusters, Embeddings, cluster_complexity, kmeans, prototype
from .dedup import DedupResult, semdedup
from .dsir import DSIRResult, dsir, hashed_ngrams, kl_reduction
from .dynamics import FIELDS, Dynamics, DynamicsRecorder
from .embed import MiniLMEncoder, RandomConvEncoder, embed
from .io import load_selection, save_selection
from .proxy import record_runs
from .sampler import RS2Sampler
from .scores import (
    DATA_SCORES,
    area_under_margin,
    aum,
    el2n,
    entropy,
    forgetting,
    grand,
    learned_epoch,
    loss,
    per_example_grad_norm,
    prob_aum,
    training_accuracy,
)
from .scores import random as random_scores
from .select import (
    SELECTORS,
    NoiseFlags,
    aum_threshold,
    ccs,
    class_balanced,
    dbp,
    flag_noisy,
    keep_easy,
    keep_hard,
    noise_aware,
    select,
    threshold_samples,
)
from .ssl import SSLEncoder, nt_xent, train_contrastive
from .texts import ParquetTexts, read_texts
from .tune import BetaChoice, FlagChoice, choose_beta, choose_flag_fraction

__all__ = [
    "DATA_SCORES", "FIELDS", "SELECTORS", "BetaChoice", "Clusters", "DSIRResult", "DedupResult", "Dynamics",
    "DynamicsRecorder", "Embeddings", "ParquetTexts", "read_texts",
    "FlagChoice", "NoiseFlags", "aum_threshold", "choose_flag_fraction",
    "flag_noisy", "noise_aware", "threshold_samples", "MiniLMEncoder", "RS2Sampler", "RandomConvEncoder",
    "area_under_margin", "aum",
    "ccs", "choose_beta", "class_balanced", "cluster_complexity", "dbp", "dsir", "el2n", "embed", "entropy",
    "forgetting", "grand", "hashed_ngrams", "keep_easy", "keep_hard", "kl_reduction", "kmeans", "learned_epoch",
    "load_selection", "loss", "per_example_grad_norm", "prob_aum", "prototype", "random_scores", "record_runs",
    "SSLEncoder", "nt_xent", "save_selection", "select", "semdedup", "train_contrastive", "training_accuracy",
]
