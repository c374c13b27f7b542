"""Report plots for data pruning: accuracy against kept fraction per method, and score histograms."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write

MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h", "p")


def accuracy_table(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[float, tuple[float, float, int]]]:
    """``{method: {keep_fraction: (mean, std, runs)}}`` from records with method, keep_fraction, accuracy."""
    acc: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        acc[str(r["method"])][float(r["keep_fraction"])].append(float(r["accuracy"]))
    return {m: {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in sorted(per.items())}
            for m, per in acc.items()}


def _save(fig: Any, path: str | os.PathLike) -> Path:
    import matplotlib.pyplot as plt

    fmt = Path(path).suffix.lstrip(".") or "png"
    out = atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return out


def plot_accuracy_vs_keep(records: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                          title: str = "", full_accuracy: float | None = None) -> Path:
    """Line plot of mean test accuracy (error bars: std over seeds) against kept fraction, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = accuracy_table(records)
    if not table:
        raise ValueError("records must hold at least one {method, keep_fraction, accuracy} entry")
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colors = plt.get_cmap("tab20").colors
    for i, (method, per) in enumerate(sorted(table.items())):
        keeps = list(per)
        mean = [per[k][0] * 100 for k in keeps]
        std = [per[k][1] * 100 for k in keeps]
        ax.errorbar(keeps, mean, yerr=std, marker=MARKERS[i % len(MARKERS)], color=colors[(2 * i) % 20 + (i // 10)],
                    capsize=2, ms=4, lw=1.2, label=method)
    if full_accuracy is not None:
        ax.axhline(full_accuracy * 100, color="gray", ls="--", lw=1, label="full data")
    ax.set(xlabel="kept fraction", ylabel="test accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_score_histograms(scores: Mapping[str, Any], path: str | os.PathLike, flagged: Any = None,
                          bins: int = 50, title: str = "") -> Path:
    """One histogram panel per score; with a boolean ``flagged`` (e.g. noisy labels) the two groups overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not scores:
        raise ValueError("scores must map at least one name to a score vector")
    mask = None if flagged is None else np.asarray(flagged, dtype=bool)
    fig, axes = plt.subplots(1, len(scores), figsize=(3.2 * len(scores), 2.8), squeeze=False)
    for ax, (name, s) in zip(axes[0], scores.items()):
        s = np.asarray(s, dtype=np.float64)
        if mask is None:
            ax.hist(s, bins=bins, color="C0")
        else:
            edges = np.histogram_bin_edges(s, bins=bins)
            ax.hist(s[~mask], bins=edges, alpha=0.6, label="clean", density=True)
            ax.hist(s[mask], bins=edges, alpha=0.6, label="flagged", density=True)
            ax.legend(fontsize=7)
        ax.set(title=name, xlabel="score (higher = harder)")
    if title:
        fig.suptitle(title, y=1.04)
    return _save(fig, path)
