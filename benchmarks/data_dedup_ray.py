"""Ray overhead on small inputs: k-means assignment and SemDeDup, local vs a local Ray instance.

    nice -n 10 .venv/bin/python benchmarks/data_dedup_ray.py --sizes 4389 50000 200000 --workers 2

For each size, random 384-d rows around 200 topics (10% near-copies) are written to a ``.npy`` file;
then, in one process: Ray start-up (``init_ray``), the nearest-centroid assignment of 100 k-means
centroids with the local loop, with today's Ray pipeline (``assign(..., backend="ray")``: id
blocks made on the driver, one per batch, rows read from the file by the workers) and with the
previous pipeline shape (``ray.data.range(N)`` with Ray's default block count, each task fetching
the whole array from the object store), and ``semdedup`` local vs ``backend="ray"`` (identical kept
rows checked). Each Ray step runs twice: the first includes starting worker processes (cold), the
second reuses them (warm).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from data_common import machine


def make(path: Path, n: int, d: int = 384, seed: int = 0) -> None:
    """``n`` unit rows around 200 topics, the last 10% near-copies of earlier rows."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((200, d)).astype(np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    n_dup = n // 10
    x = topics[rng.integers(0, 200, n)] + 0.075 * rng.standard_normal((n, d)).astype(np.float32)
    src = rng.choice(n - n_dup, n_dup, replace=False)
    x[n - n_dup:] = x[src] + (0.05 / np.sqrt(d)) * rng.standard_normal((n_dup, d)).astype(np.float32)
    np.save(path, x / np.linalg.norm(x, axis=1, keepdims=True))


def old_assign(emb, centroids: np.ndarray) -> np.ndarray:
    """The previous Ray pipeline shape: ``ray.data.range(N)`` (default blocks), whole array fetched per task."""
    import ray

    from prunekit.data.cluster import NearestRows

    ref = ray.put(np.load(emb.path))
    fn = NearestRows(centroids)

    def apply(batch: dict) -> dict:
        ids = np.asarray(batch["id"], np.int64)
        out = fn(np.asarray(ray.get(ref)[ids]))
        return {"id": ids, **out}

    best = np.empty(emb.n, np.int64)
    ds = ray.data.range(emb.n).map_batches(apply, batch_size=min(emb.n, 8192), batch_format="numpy")
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        best[b["id"]] = b["assign"]
    return best


def timed(fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", type=int, default=[4389, 50_000, 200_000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--clusters", type=int, default=100)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/datap_ray"))
    args = ap.parse_args()
    from prunekit.data.cluster import Embeddings, assign, train_kmeans
    from prunekit.data.dedup import semdedup
    from prunekit.data.ray_backend import init_ray

    info, t_init = timed(init_ray, num_cpus=args.workers)
    rows = []
    args.dir.mkdir(parents=True, exist_ok=True)
    for n in args.sizes:
        path = args.dir / f"emb{n}.npy"
        if not path.exists():
            make(path, n)
        emb = Embeddings(str(path))
        cent = train_kmeans(emb, args.clusters, seed=0, niter=10)
        (a_local, _), t_local = timed(assign, emb, cent)
        r = {"rows": n, "assign_local_s": t_local}
        for run in ("cold", "warm"):
            (a_ray, _), r[f"assign_ray_{run}_s"] = timed(assign, emb, cent, backend="ray")
            a_old, r[f"assign_old_ray_{run}_s"] = timed(old_assign, emb, cent)
            assert np.array_equal(a_ray, a_local) and np.array_equal(a_old, a_local)
        loc, r["semdedup_local_s"] = timed(semdedup, str(path), eps=0.01, n_clusters=args.clusters, niter=10)
        ray_res, r["semdedup_ray_s"] = timed(semdedup, str(path), eps=0.01, n_clusters=args.clusters, niter=10,
                                             backend="ray")
        r["identical_kept"] = bool(np.array_equal(loc.duplicate_of, ray_res.duplicate_of))
        rows.append(r)
        print(json.dumps(r), flush=True)
    print(json.dumps({"ray": info, "init_s": t_init, "rows": rows, "machine": machine()}, indent=1))


if __name__ == "__main__":
    main()
