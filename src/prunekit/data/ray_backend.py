"""Ray Data backend (extra ``ray``): run a per-row function (an encoder, nearest-centroid scoring) over the
rows of a data set on a Ray cluster, returning the same values as the local loop.

Rows are addressed by position: the driver builds ``ray.data.range(N)``; each worker maps a batch of
ids to rows of the source (an array put in the object store, or a ``.npy`` file every node can read
at the same path) and applies the function. Results come back as ``(ids, outputs)`` batches in any
order; the caller scatters them by id, so the result does not depend on scheduling.
Start Ray yourself (``ray.init()`` locally or ``ray.init(address=...)`` for a cluster); otherwise
Ray Data starts a local instance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

RowFn = Callable[[Any], Any]


def require_ray() -> Any:
    """Import ``ray`` or raise an ``ImportError`` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError("the Ray backend needs Ray Data: pip install 'prunekit[ray]'") from e
    return ray


class _Source:
    """Rows by id on a worker: an object-store array or list, or a memmapped ``.npy`` file."""

    def __init__(self, kind: str, ref: Any = None, path: str | None = None, offset: int = 0,
                 shape: tuple[int, ...] = (), dtype: str = "float32") -> None:
        self.kind, self.ref, self.path, self.offset, self.shape, self.dtype = kind, ref, path, offset, shape, dtype

    def rows(self, ids: np.ndarray) -> Any:
        """The rows at ``ids`` (a float32 array, or a list for text)."""
        if self.kind == "npy":
            mm = np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape)
            out = np.array(mm[ids], dtype=np.float32)
            del mm
            return out
        import ray

        data = ray.get(self.ref)
        return [data[i] for i in ids] if isinstance(data, list) else np.asarray(data[ids])


def _apply(batch: dict[str, np.ndarray], source: _Source, fn: RowFn) -> dict[str, np.ndarray]:
    """Ray Data task body: ``{"id"} -> {"id", outputs...}`` with ``fn`` applied to the rows."""
    ids = np.asarray(batch["id"], dtype=np.int64)
    out = fn(source.rows(ids))
    out = out if isinstance(out, dict) else {"out": out}
    return {"id": ids, **{k: np.asarray(v) for k, v in out.items()}}


def make_source(data: Any) -> tuple[_Source, int]:
    """A worker-side row source for an array, tensor, list of strings, memmap or ``Embeddings``."""
    ray = require_ray()
    path = getattr(data, "path", None)
    if path is not None and getattr(data, "array", None) is None:  # Embeddings backed by a file
        return _Source("npy", path=str(Path(path).resolve()), offset=data._offset, shape=data.shape,
                       dtype=np.dtype(data.dtype).str), int(data.shape[0])
    if getattr(data, "array", None) is not None:
        data = data.array
    if hasattr(data, "detach"):
        data = data.detach().cpu().numpy()
    if isinstance(data, (list, tuple)):
        return _Source("list", ref=ray.put(list(data))), len(data)
    arr = np.asarray(data)
    return _Source("array", ref=ray.put(arr)), int(arr.shape[0])


def map_rows(fn: RowFn, data: Any, batch_size: int = 1024, concurrency: int | None = None,
             ) -> Iterator[dict[str, np.ndarray]]:
    """Apply ``fn`` to batches of rows of ``data`` on Ray tasks; yields ``{"id", outputs...}`` batches (any order).

    ``concurrency`` caps the number of tasks running at once (default: as many as the cluster's CPUs).
    """
    ray = require_ray()
    source, n = make_source(data)
    ds = ray.data.range(n).map_batches(_apply, fn_kwargs={"source": source, "fn": fn}, batch_size=batch_size,
                                       batch_format="numpy", concurrency=concurrency)
    log.info("ray: mapping %d rows in batches of %d", n, batch_size)
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")
