"""SemDeDup and prototype scores on 1M x 384 float32 embeddings streamed from a memmap, on one machine.

    nice -n 10 .venv/bin/python benchmarks/data_dedup_1m.py make --path /tmp/emb1m.npy
    nice -n 10 .venv/bin/python benchmarks/data_dedup_1m.py run --path /tmp/emb1m.npy --clusters 1000 --eps 0.01

``make`` writes a synthetic ``.npy`` (1.5 GB) in chunks: ``--n`` rows of which ``--dup-fraction`` are
near-duplicates (a base row plus Gaussian jitter of norm ~0.05, cosine ~0.999) of earlier rows;
base rows are unit vectors around ``--topics`` random topic directions (cosine to their topic ~0.6).
It also writes ``<path>.copy_of.npy`` (source of each copy, -1 for base rows). ``run`` (a fresh
process, so its peak memory is its own) runs k-means, the streamed assignment, SemDeDup and the
prototype score, and prints wall times, duplicate precision / recall and peak RSS (``ru_maxrss``,
which also counts pages of the memmap while they are mapped).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from data_common import machine, peak_rss_mb


def make(path: Path, n: int, d: int, dup_fraction: float, topics: int, seed: int) -> None:
    """Write ``n`` x ``d`` float32 embeddings with injected near-duplicates, chunk by chunk."""
    rng = np.random.default_rng(seed)
    n_dup = round(dup_fraction * n)
    n_base = n - n_dup
    centers = rng.standard_normal((topics, d)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    chunk = 65_536
    for s in range(0, n_base, chunk):
        m = min(chunk, n_base - s)
        x = centers[rng.integers(0, topics, m)] + 0.075 * rng.standard_normal((m, d)).astype(np.float32)
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    src = np.sort(rng.choice(n_base, n_dup, replace=False))
    for s in range(0, n_dup, chunk):
        part = src[s:s + chunk]
        x = np.asarray(out[part]) + (0.05 / np.sqrt(d)) * rng.standard_normal((len(part), d)).astype(np.float32)
        out[n_base + s:n_base + s + len(part)] = x
    out.flush()
    del out
    np.save(str(path) + ".copy_of.npy", np.r_[np.full(n_base, -1), src])


def run(path: Path, n_clusters: int, eps: float, seed: int, niter: int) -> dict:
    """Time every stage on the memmapped file; report precision / recall of the injected duplicates."""
    from prunekit.data.cluster import Clusters, Embeddings, assign, train_kmeans
    from prunekit.data.dedup import semdedup

    t0 = time.perf_counter()
    emb = Embeddings(str(path), dim=384)
    cent = train_kmeans(emb, n_clusters, seed=seed, niter=niter)
    t1 = time.perf_counter()
    a, c = assign(emb, cent)
    t2 = time.perf_counter()
    res = semdedup(emb, eps=eps, clusters=Clusters(cent, a, c))
    t3 = time.perf_counter()
    proto = 1.0 - c.astype(np.float64)  # the prototype score is the assignment's by-product
    copy_of = np.load(str(path) + ".copy_of.npy")
    removed = res.removed.numpy()
    in_pair = copy_of >= 0
    in_pair[copy_of[copy_of >= 0]] = True
    precision = float(in_pair[removed].mean()) if len(removed) else 1.0
    recall = float(in_pair[removed].sum() / (copy_of >= 0).sum())
    return {"rows": emb.n, "dim": emb.d, "clusters": n_clusters, "eps": eps, "niter": niter,
            "kmeans_train_s": t1 - t0, "assign_s": t2 - t1, "dedup_s": t3 - t2, "total_s": t3 - t0,
            "removed": int(len(removed)), "injected": int((copy_of >= 0).sum()), "precision": precision,
            "recall": recall, "largest_cluster": res.stats["largest_cluster"],
            "prototype_score_mean": float(proto.mean()), "peak_rss_mib": peak_rss_mb(),
            "file_mib": os.path.getsize(path) / 2**20, "machine": machine()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["make", "run"])
    ap.add_argument("--path", type=Path, default=Path("/tmp/emb1m.npy"))
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--dup-fraction", type=float, default=0.1)
    ap.add_argument("--topics", type=int, default=2000)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--eps", type=float, default=0.01)
    ap.add_argument("--niter", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.stage == "make":
        t = time.perf_counter()
        make(args.path, args.n, args.dim, args.dup_fraction, args.topics, args.seed)
        print(f"wrote {args.path} in {time.perf_counter() - t:.0f} s")
    else:
        print(json.dumps(run(args.path, args.clusters, args.eps, args.seed, args.niter), indent=1))


if __name__ == "__main__":
    main()
