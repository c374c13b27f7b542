"""SemDeDup on text: standard-library docstrings with injected near-duplicate edits, MiniLM sentence embeddings.

    nice -n 10 .venv/bin/python benchmarks/data_dedup_text.py --out /tmp/datap_bench

A ``--dup-fraction`` of the docstrings (``prunekit.zoo.text.stdlib_corpus``, seed 0) get an edited copy:
``--drop`` of their words deleted at random. Everything is embedded with all-MiniLM-L6-v2 (offline
weights, mean pooling, unit norm; ``MiniLMEncoder``) and deduplicated for a sweep of eps. A removal is
correct if the document belongs to an injected (original, copy) pair; recall counts pairs that lost
one member. Natural near-duplicates already in the standard library count against precision.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from data_common import machine
from data_dedup import precision_recall

from prunekit.data import MiniLMEncoder, embed, semdedup
from prunekit.zoo.text import stdlib_corpus


def edited_copies(docs: list[str], fraction: float, drop: float, seed: int) -> tuple[list[str], np.ndarray]:
    """Docs plus copies with ``drop`` of their words removed; ``copy_of`` (-1 for originals)."""
    rng = np.random.default_rng(seed)
    src = np.sort(rng.choice(len(docs), round(fraction * len(docs)), replace=False))
    copies = []
    for i in src:
        words = docs[i].split()
        keep = rng.random(len(words)) >= drop
        copies.append(" ".join(w for w, k in zip(words, keep) if k))
    return docs + copies, np.r_[np.full(len(docs), -1), src]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dup-fraction", type=float, default=0.2)
    ap.add_argument("--drop", type=float, default=0.05)
    ap.add_argument("--eps", nargs="+", type=float, default=[0.005, 0.01, 0.02, 0.03, 0.05])
    ap.add_argument("--clusters", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("/tmp/datap_bench"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    docs, copy_of = edited_copies(stdlib_corpus(), args.dup_fraction, args.drop, seed=0)
    t = time.perf_counter()
    emb = embed(MiniLMEncoder(max_length=256), docs, batch_size=32)
    embed_s = time.perf_counter() - t
    md = [f"SemDeDup on text: {int((copy_of < 0).sum())} stdlib docstrings + {int((copy_of >= 0).sum())} copies "
          f"with {args.drop:.0%} of words dropped; all-MiniLM-L6-v2 embeddings ({embed_s:.0f} s), "
          f"{args.clusters} clusters:", "", "| eps | removed | precision | recall |", "|---|---|---|---|"]
    for eps in args.eps:
        res = semdedup(emb, eps=eps, n_clusters=args.clusters, seed=0)
        p, r = precision_recall(res.removed.numpy(), copy_of)
        md.append(f"| {eps} | {len(res.removed)} | {p:.3f} | {r:.3f} |")
    md += ["", f"Machine: {json.dumps(machine())}; wall time {time.perf_counter() - t0:.0f} s."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dedup-text.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
