"""SemDeDup on data with injected near-duplicates: precision and recall, and training on the deduplicated set.

    nice -n 10 .venv/bin/python benchmarks/data_dedup.py --dataset mnist1d --out /tmp/datap_bench

A ``--dup-fraction`` of the training examples (chosen with seed 0) gets a copy with small Gaussian jitter
(``--jitter`` x the signal's std, same label) appended to the training set. Examples are embedded by
each ``--encoders`` entry: ``raw`` (the flattened input itself, centered) or ``randconv`` (fixed random
1-D ConvNet features, ``RandomConvEncoder``, centered), and deduplicated for a sweep of eps and
cluster counts. A removal is correct if the example belongs to an
injected (original, copy) pair; recall counts pairs that lost one member. Then 3 seeds train with equal
steps on: the original data, the duplicated data, and the duplicated data after SemDeDup.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from data_common import SETUPS, load, machine, train_eval

from prunekit.data import RandomConvEncoder, embed, semdedup


def inject(x: torch.Tensor, y: torch.Tensor, fraction: float, jitter: float, seed: int = 0):
    """``(x', y', copy_of)``: jittered copies appended; ``copy_of[i]`` = source of copy ``i`` (-1: original)."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randperm(len(x), generator=g)[: round(fraction * len(x))]
    noise = jitter * x.std() * torch.randn((len(src), *x.shape[1:]), generator=g)
    copy_of = np.r_[np.full(len(x), -1), src.numpy()]
    return torch.cat([x, x[src] + noise]), torch.cat([y, y[src]]), copy_of


def precision_recall(removed: np.ndarray, copy_of: np.ndarray) -> tuple[float, float]:
    """Precision of removals against injected pairs, and the fraction of pairs that lost one member."""
    pair_id = np.full(len(copy_of), -1)
    copies = np.flatnonzero(copy_of >= 0)
    pair_id[copies] = np.arange(len(copies))
    pair_id[copy_of[copies]] = np.arange(len(copies))
    hit = pair_id[removed] >= 0
    pairs_hit = np.unique(pair_id[removed][hit])
    return float(hit.mean()) if len(removed) else 1.0, len(pairs_hit) / len(copies)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=sorted(SETUPS), default="mnist1d")
    ap.add_argument("--dup-fraction", type=float, default=0.3)
    ap.add_argument("--jitter", type=float, default=0.01)
    ap.add_argument("--eps", nargs="+", type=float, default=[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.02])
    ap.add_argument("--clusters", nargs="+", type=int, default=[10, 50])
    ap.add_argument("--encoders", nargs="+", choices=["raw", "randconv"], default=["raw", "randconv"])
    ap.add_argument("--train-eps", type=float, default=0.01, help="eps of the deduplicated training set (raw)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("/tmp/datap_bench"))
    ap.add_argument("--no-train", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("prunekit").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    name, data = args.dataset, load(args.dataset)
    x2, y2, copy_of = inject(data.x_train, data.y_train, args.dup_fraction, args.jitter)
    flat = x2.reshape(len(x2), -1)
    embs = {"raw": flat.numpy(), "randconv": embed(RandomConvEncoder(dim=64, seed=0), flat)}
    md = [f"SemDeDup on {name}: {len(data.y_train)} originals + {int((copy_of >= 0).sum())} jittered copies "
          f"(jitter {args.jitter} x std):", "",
          "| encoder | clusters | eps | removed | precision | recall | s |", "|---|---|---|---|---|---|---|"]
    for enc in args.encoders:
        emb = embs[enc] - embs[enc].mean(0)  # centered: cosine compares directions around the data mean
        for k in args.clusters:
            for eps in args.eps:
                t = time.perf_counter()
                res = semdedup(emb, eps=eps, n_clusters=k, seed=0)
                p, r = precision_recall(res.removed.numpy(), copy_of)
                md.append(f"| {enc} | {k} | {eps} | {len(res.removed)} | {p:.3f} | {r:.3f} | "
                          f"{time.perf_counter() - t:.2f} |")
    if not args.no_train:
        raw = embs["raw"] - embs["raw"].mean(0)
        kept = semdedup(raw, eps=args.train_eps, n_clusters=args.clusters[0], seed=0).kept
        md += ["", f"Training with equal steps ({SETUPS[name]['steps']}), SemDeDup eps {args.train_eps}, "
                   f"{args.clusters[0]} clusters, raw encoder:", "",
               "| training data | examples | test acc. (%) |", "|---|---|---|"]
        sets = {"original": (data.x_train, data.y_train), "with duplicates": (x2, y2),
                "with duplicates, SemDeDup": (x2[kept], y2[kept])}
        for label, (xs, ys) in sets.items():
            d = type(data)(xs, ys, data.x_test, data.y_test, data.num_classes, data.name)
            accs = [train_eval(name, d, s)[0] * 100 for s in args.seeds]
            md.append(f"| {label} | {len(ys)} | {np.mean(accs):.1f} ({np.std(accs):.1f}) |")
    md += ["", f"Machine: {json.dumps(machine())}; wall time {time.perf_counter() - t0:.0f} s."]
    (args.out / f"{name}-dedup.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
