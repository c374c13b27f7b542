"""Ray Data backend (extra ``ray``): run per-row functions (an encoder, nearest-centroid assignment) and
SemDeDup's pair-search jobs (batches of whole clusters; runs of anchor clusters for the cross-cluster
search) on a Ray cluster, returning the same values as the local loop.

Rows are addressed by position: the driver builds a data set of row ids, one block per batch; each
worker maps a batch of ids to rows of the source and applies the function. A source is a ``.npy`` file,
a folder of ``.npy`` shards or a Parquet text column (``ParquetTexts``), that every node reads at the
same path (the driver never holds the rows), or an in-memory array / list put once in the object store.
Results come back as ``(ids, outputs)`` batches in any order; the caller scatters them by id, so the
result does not depend on scheduling.

``init_ray(address)`` connects to ``address`` (or ``RAY_ADDRESS``) or starts a local instance once.
Why small inputs were slow: ``ray.data.range(N)`` defaults to about 200 blocks, so 4,389 rows ran as
200 read tasks of ~22 rows each, and every map task fetched the whole array from the object store;
an encoder was rebuilt in every task. Now the id blocks are made on the driver (one per batch, no
read tasks), and encoders and models run in actors that load them once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

RowFn = Callable[..., Any]
ADDRESS_ENV = "RAY_ADDRESS"


def require_ray() -> Any:
    """Import ``ray`` or raise an ``ImportError`` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError("the Ray backend needs Ray Data: pip install 'prunekit[ray]'") from e
    return ray


def init_ray(address: str | None = None, num_cpus: int | None = None) -> dict[str, Any]:
    """Connect to ``address`` (``"auto"``, ``"ray://host:port"``; default ``$RAY_ADDRESS``) or start a local Ray once.

    Returns ``{"address", "cpus", "started"}`` for the result manifest. An already initialised Ray is reused.
    """
    ray = require_ray()
    address = address or os.environ.get(ADDRESS_ENV) or None
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address is None and num_cpus is not None:
            kw["num_cpus"] = num_cpus
        ray.init(address=address, **kw)
        started = True
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
    cpus = int(ray.cluster_resources().get("CPU", 0))
    log.info("ray: %s (%d CPUs)", address or "local instance", cpus)
    return {"address": address or "local", "cpus": cpus, "started": started}


class _Source:
    """Rows by id on a worker: file-backed ``Embeddings`` (read from disk), or an object-store array or list."""

    def __init__(self, kind: str, ref: Any = None) -> None:
        self.kind, self.ref = kind, ref

    def rows(self, ids: np.ndarray) -> Any:
        """The rows at sorted ``ids`` (a float32 array, or a list for text)."""
        if self.kind in ("file", "parquet"):
            return self.ref.take(ids)
        import ray

        data = ray.get(self.ref)
        return [data[i] for i in ids] if isinstance(data, list) else np.asarray(data[ids])

    def embeddings(self) -> Any:
        """The whole source as ``Embeddings`` on a worker (files stay on disk; an array is fetched once)."""
        from .cluster import Embeddings

        if self.kind == "file":
            return self.ref
        import ray

        return Embeddings.trusted(np.asarray(ray.get(self.ref)))


def make_source(data: Any) -> tuple[_Source, int]:
    """A worker-side row source for an array, tensor, list of strings, memmap or ``Embeddings``."""
    from .texts import ParquetTexts

    ray = require_ray()
    if isinstance(data, ParquetTexts):  # workers read their row groups from the file at the same path
        return _Source("parquet", ref=data), len(data)
    if getattr(data, "files", None) and getattr(data, "array", None) is None:  # Embeddings backed by files
        return _Source("file", ref=data), int(data.n)
    if getattr(data, "array", None) is not None:
        data = data.array
    if hasattr(data, "detach"):
        data = data.detach().cpu().numpy()
    if isinstance(data, (list, tuple)):
        return _Source("list", ref=ray.put(list(data))), len(data)
    arr = np.asarray(data)
    return _Source("array", ref=ray.put(arr)), int(arr.shape[0])


def _apply(batch: dict[str, np.ndarray], source: _Source, fn: RowFn, with_ids: bool) -> dict[str, np.ndarray]:
    """Ray Data task body: ``{"id"} -> {"id", outputs...}`` with ``fn`` applied to the rows."""
    ids = np.asarray(batch["data"], dtype=np.int64)
    out = fn(ids, source.rows(ids)) if with_ids else fn(source.rows(ids))
    out = out if isinstance(out, dict) else {"out": out}
    res = {k: np.asarray(v) for k, v in out.items()}
    return res if with_ids else {"id": ids, **res}


class _ActorApply:
    """Ray Data actor: builds ``fn`` once (e.g. loads an encoder's weights), then applies it to every batch."""

    def __init__(self, source: _Source, fn: RowFn, with_ids: bool) -> None:
        self.source, self.fn, self.with_ids = source, fn, with_ids

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _apply(batch, self.source, self.fn, self.with_ids)


def _id_blocks(ray: Any, n: int, batch_size: int) -> Any:
    """Row ids ``0..n-1`` as a data set of one block per batch, made on the driver (no read tasks to schedule)."""
    return ray.data.from_numpy([np.arange(a, min(a + batch_size, n)) for a in range(0, n, batch_size)])


def _tasks(ray: Any, concurrency: int | None) -> dict[str, Any]:
    return {} if concurrency is None else {"compute": ray.data.TaskPoolStrategy(size=concurrency)}


def _workers(concurrency: int | None, n_batches: int) -> int:
    ray = require_ray()
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return max(1, min(concurrency or cpus, n_batches))


def map_rows(fn: RowFn, data: Any, batch_size: int = 1024, concurrency: int | None = None, with_ids: bool = False,
             actors: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Apply ``fn`` to batches of rows of ``data`` on Ray; yields ``{"id", outputs...}`` batches (any order).

    ``with_ids``: ``fn(ids, rows)`` returns its own columns (e.g. a varying number of entries per batch).
    ``actors``: run in a pool of ``concurrency`` actors that keep ``fn`` loaded (encoders); otherwise tasks.
    ``concurrency`` caps the parallelism (default: the cluster's CPUs).
    """
    ray = require_ray()
    init_ray()
    source, n = make_source(data)
    n_batches = -(-n // batch_size)
    ds = _id_blocks(ray, n, batch_size)
    kw = {"source": source, "fn": fn, "with_ids": with_ids}
    if actors:
        ds = ds.map_batches(_ActorApply, fn_constructor_kwargs=kw, batch_size=batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=_workers(concurrency, n_batches)))
    else:
        ds = ds.map_batches(_apply, fn_kwargs=kw, batch_size=batch_size, batch_format="numpy",
                            **_tasks(ray, concurrency))
    log.info("ray: mapping %d rows in %d batches of %d", n, n_batches, batch_size)
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")


def _run_job(batch: dict[str, np.ndarray], source: _Source, jobs: Any, fn: RowFn) -> dict[str, np.ndarray]:
    """Ray Data task body for ``map_jobs``: one job number -> its ``(pi, pj)`` pairs as rows."""
    import ray

    emb = source.embeddings()
    all_jobs = ray.get(jobs)
    pis, pjs = [], []
    for j in np.asarray(batch["data"], dtype=np.int64):
        pi, pj = fn(emb, all_jobs[int(j)])
        pis.append(pi)
        pjs.append(pj)
    return {"pi": np.concatenate(pis).astype(np.int64), "pj": np.concatenate(pjs).astype(np.int64)}


def map_jobs(fn: RowFn, data: Any, jobs: list[Any], concurrency: int | None = None,
             ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Run ``fn(embeddings, job) -> (pi, pj)`` for every job on Ray tasks that read the rows themselves.

    The job list goes to the object store once; each task takes its job by number (one job per task).
    """
    ray = require_ray()
    init_ray()
    if not jobs:
        return
    source, _ = make_source(data)
    ref = ray.put(jobs)
    ds = _id_blocks(ray, len(jobs), 1).map_batches(
        _run_job, fn_kwargs={"source": source, "jobs": ref, "fn": fn}, batch_size=1, batch_format="numpy",
        **_tasks(ray, concurrency))
    log.info("ray: %d pair-search jobs", len(jobs))
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        yield b["pi"], b["pj"]
