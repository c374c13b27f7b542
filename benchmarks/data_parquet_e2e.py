"""Parquet in, kept rows out, through the CLI: `data embed` then `data dedup`, locally and on a local Ray.

    nice -n 10 .venv/bin/python benchmarks/data_parquet_e2e.py --out /tmp/pq_e2e --workers 2

The built-in corpus (``stdlib_corpus()`` docstrings) plus edited copies (``data_dedup_text.edited_copies``:
20% of the docstrings, 5% of their words deleted, seed 0) is written as ``OUT/pool.parquet`` (columns ``id``,
``body``; row groups of ``--row-group`` rows). Each backend then runs, as a fresh CLI process each:
``prunekit data embed OUT/pool.parquet --text-field body --backend B`` (MiniLM, streamed by row group) and
``prunekit data dedup --embeddings ... --eps E --clusters K --backend B``. Printed: wall and CPU seconds of
every command (children's CPU only: Ray workers are separate processes and are not counted), the largest
difference between the two backends' embeddings, and whether the kept indices (``kept.npy``) are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from data_common import machine
from data_dedup_text import edited_copies


def write_pool(path: Path, row_group: int) -> int:
    """The corpus plus edited copies as a Parquet file; the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prunekit.zoo.text import stdlib_corpus

    docs, _ = edited_copies(stdlib_corpus(), 0.2, 0.05, seed=0)
    pq.write_table(pa.table({"id": np.arange(len(docs)), "body": docs}), path, row_group_size=row_group)
    return len(docs)


def cli(args: list[str], env: dict[str, str]) -> dict:
    """Run ``prunekit ARGS`` in a fresh process: wall and child CPU seconds; raises on a non-zero exit."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run([str(Path(sys.executable).parent / "prunekit"), *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"prunekit {' '.join(args)} failed (rc {r.returncode}):\n{r.stdout}\n{r.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cmd": "prunekit " + " ".join(args), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "loadavg": round(os.getloadavg()[0], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/pq_e2e"))
    ap.add_argument("--row-group", type=int, default=512)
    ap.add_argument("--eps", type=float, default=0.02)
    ap.add_argument("--clusters", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray instance (RAY_ADDRESS unset)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pool = args.out / "pool.parquet"
    n = write_pool(pool, args.row_group) if not pool.exists() else None
    env = {**os.environ, "PRUNEKIT_RAY_CPUS": str(args.workers)}
    rows = []
    for backend in ("local", "ray"):
        emb, sel = args.out / f"emb-{backend}", args.out / f"dedup-{backend}"
        rows.append({"backend": backend, "step": "embed", **cli(
            ["data", "embed", str(pool), "--text-field", "body", "--batch-size", "32", "--threads",
             str(args.threads), "--backend", backend, "--out", str(emb), "--overwrite"], env)})
        rows.append({"backend": backend, "step": "dedup", **cli(
            ["data", "dedup", "--embeddings", str(emb), "--eps", str(args.eps), "--clusters", str(args.clusters),
             "--threads", str(args.threads), "--backend", backend, "--out", str(sel), "--overwrite"], env)})
        print(json.dumps(rows[-2:]), flush=True)
    e = [np.load(args.out / f"emb-{b}" / "embeddings.npy") for b in ("local", "ray")]
    kept = [np.load(args.out / f"dedup-{b}" / "kept.npy") for b in ("local", "ray")]
    res = {"rows": n or len(e[0]), "row_group": args.row_group, "eps": args.eps, "clusters": args.clusters,
           "max_abs_embedding_diff": float(np.abs(e[0] - e[1]).max()), "kept_local": len(kept[0]),
           "kept_ray": len(kept[1]), "kept_identical": bool(np.array_equal(kept[0], kept[1])), "steps": rows,
           "machine": machine()}
    (args.out / "result.json").write_text(json.dumps(res, indent=1))
    print("| backend | step | wall s | CPU s (driver process) | load |\n|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['backend']} | {r['step']} | {r['wall_s']} | {r['cpu_s']} | {r['loadavg']} |")
    print({k: v for k, v in res.items() if k not in ("steps", "machine")})


if __name__ == "__main__":
    main()
