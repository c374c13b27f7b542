"""SemDeDup on text: standard-library docstrings with injected near-duplicate edits, MiniLM sentence embeddings.

    nice -n 10 .venv/bin/python benchmarks/data_dedup_text.py --out /tmp/datap_bench --emb-cache /tmp/text_emb.npy

A ``--dup-fraction`` of the docstrings (``prunekit.zoo.text.stdlib_corpus``, seed 0) get an edited copy:
``--drop`` of their words deleted at random. Everything is embedded with all-MiniLM-L6-v2 (offline
weights, mean pooling, unit norm; ``MiniLMEncoder``) and deduplicated for a sweep of eps. A removal is
correct if the document belongs to an injected (original, copy) pair; recall counts pairs that lost
one member. Natural near-duplicates already in the standard library count against precision.
Against exact all-pairs ground truth (every pair with cosine > 1 - eps, ``data_dedup_eval``) it
compares the single-cluster pass (``cross_cluster=False``), the exact search (default) and a plain
faiss k-means + per-cluster script.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from data_common import machine, peak_rss_mb
from data_dedup import precision_recall
from data_dedup_eval import exact_pairs, faiss_semdedup, precision, scores, unit

from prunekit.data import Embeddings, MiniLMEncoder, embed, semdedup
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


def embeddings(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, float]:
    """MiniLM embeddings of the docs + edited copies (read from ``--emb-cache`` when it exists), copy_of, seconds."""
    docs, copy_of = edited_copies(stdlib_corpus(), args.dup_fraction, args.drop, seed=0)
    if args.emb_cache is not None and args.emb_cache.exists():
        emb = np.load(args.emb_cache)
        if len(emb) != len(docs):
            raise SystemExit(f"{args.emb_cache} holds {len(emb)} rows, the corpus {len(docs)}")
        return emb, copy_of, float("nan")
    t = time.perf_counter()
    emb = np.asarray(embed(MiniLMEncoder(max_length=256), docs, batch_size=32))
    if args.emb_cache is not None:
        np.save(args.emb_cache, emb)
    return emb, copy_of, time.perf_counter() - t


def rows_for(name: str, emb: np.ndarray, eps: float, k: int, gt: tuple, copy_of: np.ndarray) -> dict:
    """One method at one eps: wall time, pair recall vs exact ground truth, precision, planted-pair recall."""
    t, c = time.perf_counter(), time.process_time()
    if name == "faiss":
        dup_of, _ = faiss_semdedup(Embeddings(emb), k, eps, seed=0)
    else:
        dup_of = semdedup(emb, eps=eps, n_clusters=k, seed=0, cross_cluster=name == "exact").duplicate_of
    dt, cpu = time.perf_counter() - t, time.process_time() - c
    kept = np.flatnonzero(dup_of < 0)
    p_planted, r_planted = precision_recall(np.flatnonzero(dup_of >= 0), copy_of)
    return {"method": name, "eps": eps, "s": dt, "cpu_s": cpu, "removed": int((dup_of >= 0).sum()),
            **scores(kept, len(emb), *gt), "precision": precision(Embeddings(emb), dup_of, 1.0 - eps),
            "planted_precision": p_planted, "planted_recall": r_planted}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dup-fraction", type=float, default=0.2)
    ap.add_argument("--drop", type=float, default=0.05)
    ap.add_argument("--eps", nargs="+", type=float, default=[0.005, 0.01, 0.02, 0.03, 0.05])
    ap.add_argument("--clusters", type=int, default=20)
    ap.add_argument("--emb-cache", type=Path, default=None, help="reuse / write the embeddings here (.npy)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/datap_bench"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    emb, copy_of, embed_s = embeddings(args)
    x = unit(emb)
    md = [f"SemDeDup on text: {int((copy_of < 0).sum())} stdlib docstrings + {int((copy_of >= 0).sum())} copies "
          f"with {args.drop:.0%} of words dropped; all-MiniLM-L6-v2 embeddings (embedding {embed_s:.0f} s), "
          f"{args.clusters} clusters; ground truth = all pairs with cosine > 1 - eps:", "",
          "| eps | method | ground-truth pairs | unresolved | pair recall | precision | removed | planted recall "
          "| wall s | CPU s |", "|---|---|---|---|---|---|---|---|---|---|"]
    results = []
    for eps in args.eps:
        gt = exact_pairs(x, 1.0 - eps)
        for name in ("single-cluster", "exact", "faiss"):
            r = rows_for(name, emb, eps, args.clusters, gt, copy_of)
            results.append(r)
            md.append(f"| {eps} | {name} | {r['gt_pairs']} | {r['unresolved_pairs']} | {r['pair_recall']:.4f} | "
                      f"{r['precision']:.3f} | {r['removed']} | {r['planted_recall']:.3f} | {r['s']:.2f} | "
                      f"{r['cpu_s']:.2f} |")
    md += ["", f"Machine: {json.dumps(machine())}; peak RSS {peak_rss_mb():.0f} MiB; wall time "
           f"{time.perf_counter() - t0:.0f} s."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dedup-text.md").write_text("\n".join(md) + "\n")
    (args.out / "dedup-text.json").write_text(json.dumps(results, indent=1))
    print("\n".join(md))


if __name__ == "__main__":
    main()
