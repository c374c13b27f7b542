"""SemDeDup on 1M x 384 float32 embeddings streamed from a memmap, on one machine.

    nice -n 10 .venv/bin/python benchmarks/data_dedup_1m.py make --path /tmp/emb1m.npy
    for m in single exact faiss; do
      nice -n 10 .venv/bin/python benchmarks/data_dedup_1m.py run --path /tmp/emb1m.npy --method $m; done
    nice -n 10 .venv/bin/python benchmarks/data_dedup_1m.py run --path /tmp/emb1m.npy --method exact --backend ray
    nice -n 10 .venv/bin/python benchmarks/data_dedup_1m.py eval --path /tmp/emb1m.npy --queries 2000

``make`` writes a synthetic ``.npy`` (1.5 GB) in chunks: ``--n`` rows of which ``--dup-fraction`` are
near-duplicates (a base row plus Gaussian jitter of norm ~0.05, cosine ~0.999) of earlier rows;
base rows are unit vectors around ``--topics`` random topic directions (cosine to their topic ~0.6).
It also writes ``<path>.copy_of.npy`` (source of each copy, -1 for base rows). ``run`` (a fresh
process, so its peak memory is its own) runs one method: k-means, the streamed assignment (with the
exact cross-cluster candidates for ``exact``) and the pair search + greedy, the stages of
``semdedup`` timed one by one, and saves ``duplicate_of``; it prints wall times and peak RSS
(``ru_maxrss``, which also counts pages of the memmap while they are mapped). ``eval`` scores every
saved method against the planted pairs (each checked in float64) and against exact ground truth for
``--queries`` random rows searched against all rows (which also finds any pair that was not planted).
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


def run(path: Path, method: str, n_clusters: int, eps: float, seed: int, niter: int, backend: str,
        workers: int) -> dict:
    """One method in this process (its own peak RSS): stage times, removed rows, planted-pair recall."""
    from data_dedup_eval import faiss_semdedup

    from prunekit.data.cluster import Embeddings, assign_boundary, train_kmeans
    from prunekit.data.dedup import all_pairs, boundary_radius, greedy_global, visit_rank

    ray_info = None
    if backend == "ray":
        from prunekit.data.ray_backend import init_ray

        ray_info = init_ray(num_cpus=workers)
    load_start = os.getloadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    emb = Embeddings(str(path), dim=384)
    t_check = time.perf_counter() - t0
    c_check = time.process_time() - c0
    stats: dict = {}
    if method == "faiss":
        dup_of, times = faiss_semdedup(emb, n_clusters, eps, seed=seed, niter=niter)
    else:
        cent = train_kmeans(emb, n_clusters, seed=seed, niter=niter)
        t1, c1 = time.perf_counter(), time.process_time()
        radius = boundary_radius(eps) if method == "exact" else None
        a, c, boundary = assign_boundary(emb, cent, radius, backend=backend, concurrency=workers)
        t2, c2 = time.perf_counter(), time.process_time()
        pi, pj, stats = all_pairs(emb, a, n_clusters, boundary if method == "exact" else None, 1.0 - eps,
                                  backend=backend, concurrency=workers)
        del boundary
        dup_of = greedy_global(emb.n, pi, pj, visit_rank(c, "farthest"))
        t3, c3 = time.perf_counter(), time.process_time()
        times = {"kmeans_s": t1 - t0 - t_check, "assign_s": t2 - t1, "dedup_s": t3 - t2, "total_s": t3 - t0 - t_check,
                 "kmeans_cpu_s": c1 - c0 - c_check, "assign_cpu_s": c2 - c1, "dedup_cpu_s": c3 - c2}
    times["cpu_s"] = time.process_time() - c0 - c_check  # this process's CPU time (all threads), check excluded
    np.save(f"{path}.{method}-{backend}.dup_of.npy", dup_of)
    copy_of = np.load(str(path) + ".copy_of.npy")
    removed = np.flatnonzero(dup_of >= 0)
    in_pair = copy_of >= 0
    in_pair[copy_of[copy_of >= 0]] = True
    return {"method": method, "backend": backend, "workers": workers if backend == "ray" else None,
            "ray": ray_info, "rows": emb.n, "dim": emb.d, "clusters": n_clusters, "eps": eps, "niter": niter,
            "finite_check_s": t_check, **times, "removed": int(len(removed)), "injected": int((copy_of >= 0).sum()),
            "planted_precision": float(in_pair[removed].mean()) if len(removed) else 1.0, **stats,
            "peak_rss_mib": peak_rss_mb(), "file_mib": os.path.getsize(path) / 2**20, "loadavg_start": load_start,
            "machine": machine()}


def evaluate(path: Path, eps: float, n_queries: int, seed: int) -> dict:
    """Score every saved method against (1) the planted pairs, each checked to have float64 cosine > 1 - eps,
    and (2) exact ground truth for ``n_queries`` random rows searched against all rows (any pair, planted or not).
    """
    from data_dedup_eval import precision, sampled_pairs, scores, unit

    from prunekit.data.cluster import Embeddings

    emb = Embeddings(str(path))
    copy_of = np.load(str(path) + ".copy_of.npy")
    ci = np.flatnonzero(copy_of >= 0)
    src = copy_of[ci]
    o = np.argsort(src)
    a, b = unit(emb.take(ci)).astype(np.float64), np.empty((len(ci), emb.d))
    b[o] = unit(emb.take(src[o]))
    above = np.einsum("nd,nd->n", a, b) > 1.0 - eps
    planted = (np.minimum(ci, src)[above], np.maximum(ci, src)[above])
    t = time.perf_counter()
    cache = path.parent / f"{path.name}.sampled_gt_{n_queries}_{seed}_{eps}.npz"  # reused by a later eval
    if cache.exists():
        z = np.load(cache)
        qi, pi, pj = z["qi"], z["pi"], z["pj"]
    else:
        qi, pi, pj = sampled_pairs(emb, 1.0 - eps, n_queries, seed=seed)
        np.savez(cache, qi=qi, pi=pi, pj=pj)
    known = set(zip(*(x.tolist() for x in planted)))
    out = {"planted_pairs": int(len(ci)), "planted_pairs_above_threshold": int(above.sum()),
           "queries": int(len(qi)), "sampled_gt_pairs": int(len(pi)),
           "sampled_gt_pairs_not_planted": int(sum((i, j) not in known for i, j in zip(pi.tolist(), pj.tolist()))),
           "gt_s": time.perf_counter() - t, "methods": {}}
    for f in sorted(path.parent.glob(path.name + ".*.dup_of.npy")):
        dup_of = np.load(f)
        kept = np.flatnonzero(dup_of < 0)
        out["methods"][f.name.split(".")[-3]] = {
            "planted": scores(kept, emb.n, *planted), "sampled": scores(kept, emb.n, pi, pj),
            "removed": int((dup_of >= 0).sum()), "precision": precision(emb, dup_of, 1.0 - eps)}
    ref = path.parent / (path.name + ".exact-local.dup_of.npy")
    for f in sorted(path.parent.glob(path.name + ".exact-ray.dup_of.npy")):
        out["ray_identical_kept"] = bool(np.array_equal(np.load(f) < 0, np.load(ref) < 0))
        out["ray_identical_duplicate_of"] = bool(np.array_equal(np.load(f), np.load(ref)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["make", "run", "eval"])
    ap.add_argument("--path", type=Path, default=Path("/tmp/emb1m.npy"))
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--dup-fraction", type=float, default=0.1)
    ap.add_argument("--topics", type=int, default=2000)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--eps", type=float, default=0.01)
    ap.add_argument("--niter", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", choices=["exact", "single", "faiss"], default="exact",
                    help="exact: cross-cluster search (default of semdedup); single: within clusters only; "
                    "faiss: a plain faiss k-means + per-cluster script")
    ap.add_argument("--backend", choices=["local", "ray"], default="local")
    ap.add_argument("--workers", type=int, default=2, help="ray: CPUs of the local Ray instance")
    ap.add_argument("--queries", type=int, default=2000, help="eval: random rows searched against all rows")
    args = ap.parse_args()
    if args.stage == "make":
        t = time.perf_counter()
        make(args.path, args.n, args.dim, args.dup_fraction, args.topics, args.seed)
        print(f"wrote {args.path} in {time.perf_counter() - t:.0f} s")
    elif args.stage == "run":
        print(json.dumps(run(args.path, args.method, args.clusters, args.eps, args.seed, args.niter, args.backend,
                             args.workers), indent=1))
    else:
        print(json.dumps(evaluate(args.path, args.eps, args.queries, args.seed), indent=1))


if __name__ == "__main__":
    main()
