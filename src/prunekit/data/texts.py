"""Text pools for data pruning: ``.jsonl`` (one JSON object per line), ``.txt`` (one document per line) or
``.parquet`` (a string column; streamed by row group, never read whole, so it can be larger than memory).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PARQUET_MAGIC = b"PAR1"
PARQUET_SUFFIXES = (".parquet", ".pq")


def is_parquet(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a Parquet file by its suffix (its bytes are checked by ``ParquetTexts``)."""
    return Path(path).suffix.lower() in PARQUET_SUFFIXES


def read_texts(path: str | os.PathLike, text_field: str = "text") -> list[str]:
    """Documents from ``.jsonl`` (field ``text_field``), ``.txt`` (one per non-empty line) or ``.parquet``
    (column ``text_field``, every row), as one in-memory list.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file {str(path)!r} does not exist")
    if is_parquet(path):
        pq = ParquetTexts(path, text_field)
        return [t for _, batch in pq.batches(65_536) for t in batch]
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if path.suffix != ".jsonl":
        return lines
    docs = []
    for i, ln in enumerate(lines):
        try:
            obj = json.loads(ln)
        except json.JSONDecodeError as e:
            raise ValueError(f"{str(path)!r} line {i + 1} is not valid JSON ({e})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
            raise ValueError(f"{str(path)!r} line {i + 1}: expected an object with a string field {text_field!r}")
        docs.append(obj[text_field])
    return docs


class ParquetTexts:
    """The string column ``column`` of a Parquet file, addressed by row position and read one row group at a time.

    Checked on construction, before any text is read: the file exists, is Parquet (magic bytes and footer),
    holds ``column`` as a string column, has at least one row and no nulls in it (from the row groups'
    statistics; a file written without statistics gets one streamed pass over the column). ``len()`` is the
    row count from the footer. ``batches`` streams in order (the local backend); ``take`` serves sorted row
    ids from one cached row group at a time (Ray workers, which read the file at the same path).
    Row ``i`` of the file is example ``i`` everywhere (embeddings, kept indices).
    """

    def __init__(self, path: str | os.PathLike, column: str = "text") -> None:
        self.path, self.column = str(Path(path).resolve()), column
        self._cache: tuple[int, list[str]] | None = None
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"text file {str(p)!r} does not exist (expected a Parquet file)")
        if p.stat().st_size < 12:
            raise ValueError(f"text file {str(p)!r} is empty or truncated ({p.stat().st_size} bytes); expected "
                             "a Parquet file")
        with open(p, "rb") as f:
            head = f.read(4)
            f.seek(-4, os.SEEK_END)
            tail = f.read(4)
        if head != PARQUET_MAGIC or tail != PARQUET_MAGIC:
            raise ValueError(f"text file {str(p)!r} is not a Parquet file (no PAR1 magic at both ends)")
        pf = self._file()
        meta = pf.metadata
        names = [meta.schema.column(i).name for i in range(meta.num_columns)]
        if column not in names:
            raise ValueError(f"text file {str(p)!r} has no column {column!r} (--text-field); its columns: {names}")
        self._col = names.index(column)
        import pyarrow as pa

        typ = pf.schema_arrow.field(column).type
        if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
            raise ValueError(f"text file {str(p)!r}: column {column!r} must hold strings, got {typ}")
        self.num_rows = int(meta.num_rows)
        if self.num_rows == 0:
            raise ValueError(f"text file {str(p)!r} has no rows")
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        self.starts = [0]
        for s in sizes:
            self.starts.append(self.starts[-1] + s)
        self._check_nulls(meta)

    def _file(self) -> Any:
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(self.path)
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a damaged footer
            raise ValueError(f"text file {self.path!r} is not a readable Parquet file ({e})") from None

    def _check_nulls(self, meta: Any) -> None:
        counts = []
        for g in range(meta.num_row_groups):
            st = meta.row_group(g).column(self._col).statistics
            counts.append(st.null_count if st is not None and st.has_null_count else None)
        if all(c is not None for c in counts):
            bad = [g for g, c in enumerate(counts) if c]
            where = f"row group {bad[0]}" if bad else ""
        else:  # no statistics: one streamed pass over the column
            where = ""
            for start, batch in self._arrow_batches(65_536):
                if batch.null_count:
                    where = f"row {start + next(i for i, v in enumerate(batch.is_null().to_pylist()) if v)}"
                    break
        if where:
            raise ValueError(f"text file {self.path!r}: column {self.column!r} has null values ({where}); every row "
                             "must hold a string")

    def __len__(self) -> int:
        return self.num_rows

    def _arrow_batches(self, batch_size: int) -> Iterator[tuple[int, Any]]:
        start = 0
        for rb in self._file().iter_batches(batch_size=batch_size, columns=[self.column]):
            col = rb.column(0)
            yield start, col
            start += len(col)

    def batches(self, batch_size: int) -> Iterator[tuple[int, list[str]]]:
        """``(start, texts)`` in file order, ``batch_size`` rows at a time (never the whole column)."""
        for start, col in self._arrow_batches(batch_size):
            yield start, col.to_pylist()

    def _group(self, g: int) -> list[str]:
        if self._cache is None or self._cache[0] != g:
            self._cache = (g, self._file().read_row_group(g, columns=[self.column]).column(0).to_pylist())
        return self._cache[1]

    def take(self, ids: Any) -> list[str]:
        """The texts at sorted row ids (reads the row groups that hold them, one cached at a time)."""
        import bisect

        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.num_rows:
                raise IndexError(f"row {i} out of range for {self.num_rows} rows of {self.path!r}")
            g = bisect.bisect_right(self.starts, i) - 1
            out.append(self._group(g)[i - self.starts[g]])
        return out

    def __getstate__(self) -> dict[str, Any]:  # ship the path and layout to Ray workers, not a cached row group
        return {**self.__dict__, "_cache": None}
