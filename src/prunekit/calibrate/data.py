"""Calibration data: N windows of ``seq_len`` tokens drawn with a seed from a text source.

Sources: a text file or a folder of ``.txt``/``.md`` files, a Hugging Face dataset saved with
``save_to_disk`` (column ``text``), or the built-in standard-library docstring corpus (train split).
The texts are tokenized one document at a time, joined with the tokens of ``"\\n\\n"``, and
``nsamples`` windows start at uniformly drawn positions (``torch.Generator`` seeded by ``seed``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

JOIN = "\n\n"
TEXT_SUFFIXES = (".txt", ".md", ".rst")


@dataclass
class Calibration:
    """Calibration token ids ``(N, L)`` and where they came from (stored with every result)."""

    input_ids: Tensor  # (N, L) int64
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = self.input_ids
        if not torch.is_tensor(ids) or ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"calibration input_ids must be an integer tensor (N, L), got {_describe(ids)}")
        if ids.shape[0] == 0 or ids.shape[1] == 0:
            raise ValueError(f"calibration data is empty (shape {list(ids.shape)}): give at least one sample")
        self.input_ids = ids.long()
        self.info.setdefault("nsamples", int(ids.shape[0]))
        self.info.setdefault("seq_len", int(ids.shape[1]))
        self.info.setdefault("sha256_16", hashlib.sha256(ids.numpy().tobytes()).hexdigest()[:16])

    @property
    def nsamples(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def batches(self, batch_size: int) -> list[Tensor]:
        """The samples in order, in batches of ``batch_size`` (the last may be smaller)."""
        return list(self.input_ids.split(batch_size))


def _describe(x: Any) -> str:
    return f"tensor {x.dtype} {list(x.shape)}" if torch.is_tensor(x) else type(x).__name__


def as_calibration(data: Any) -> Calibration:
    """A ``Calibration`` from one, from token ids ``(N, L)``, or from a list of equal-length 1-D ids."""
    if isinstance(data, Calibration):
        return data
    if isinstance(data, dict) and "input_ids" in data:
        data = data["input_ids"]
    if isinstance(data, (list, tuple)):
        if not data:
            raise ValueError("calibration data is empty: give at least one sample")
        if all(torch.is_tensor(t) and t.dim() == 1 for t in data):
            if len({t.numel() for t in data}) != 1:
                raise ValueError("calibration samples must all have the same length (no padding is used)")
            data = torch.stack(list(data))
    if torch.is_tensor(data):
        return Calibration(data, {"source": "tensor"})
    raise TypeError(
        "data for calibrated pruning must be a prunekit.calibrate.Calibration, token ids (N, L), or a list of "
        f"equal-length 1-D token tensors; got {_describe(data)}"
    )


# ----------------------------------------------------------------------------------------------
# text sources


def load_texts(path: str | Path) -> list[str]:
    """Documents from a text file, a folder of text files (sorted), or a dataset saved by ``save_to_disk``."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"calibration source {p} does not exist (a text file, a folder or a saved dataset)")
    if p.is_file():
        return _nonempty([p.read_text(encoding="utf-8")], p)
    if (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists() or (p / "state.json").exists():
        return _nonempty(_load_saved_dataset(p), p)
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
    return _nonempty([f.read_text(encoding="utf-8") for f in files], p)


def _nonempty(texts: list[str], where: Path) -> list[str]:
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError(f"calibration source {where} holds no text ({TEXT_SUFFIXES} files or a 'text' column)")
    return texts


def _load_saved_dataset(p: Path) -> list[str]:
    """The ``text`` column of a Hugging Face dataset saved on disk (its train split for a DatasetDict)."""
    try:
        import datasets
    except ImportError as e:
        raise ImportError("reading a saved dataset needs the 'datasets' package: pip install datasets") from e
    ds = datasets.load_from_disk(str(p))
    if isinstance(ds, datasets.DatasetDict):
        split = "train" if "train" in ds else sorted(ds)[0]
        ds = ds[split]
    cols = [c for c, f in ds.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
    col = "text" if "text" in ds.column_names else (cols[0] if cols else None)
    if col is None:
        raise ValueError(f"dataset {p} has no text column (columns: {ds.column_names})")
    return [t for t in ds[col] if isinstance(t, str)]


def builtin_texts(split: str = "train") -> list[str]:
    """The standard-library docstring corpus, its ``train`` or ``validation`` split (``zoo.text``)."""
    from ..zoo.text import stdlib_corpus, train_val_split

    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    train, val = train_val_split(stdlib_corpus())
    return train if split == "train" else val


def tokenize_stream(texts: list[str], tokenizer: Any) -> Tensor:
    """All documents tokenized one by one and joined with the tokens of ``"\\n\\n"``; shape ``(T,)``."""
    sep = tokenizer(JOIN, add_special_tokens=False)["input_ids"]
    enc = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    out: list[int] = []
    for i, ids in enumerate(enc):
        if i:
            out.extend(sep)
        out.extend(ids)
    return torch.tensor(out, dtype=torch.long)


def sample_windows(stream: Tensor, nsamples: int, seq_len: int, seed: int = 0) -> Tensor:
    """``nsamples`` windows of ``seq_len`` tokens at seeded uniform start positions; ``(N, L)``."""
    for v, name in ((nsamples, "nsamples"), (seq_len, "seq_len")):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if stream.numel() < seq_len:
        raise ValueError(f"the calibration text has {stream.numel()} tokens, fewer than seq_len={seq_len}")
    gen = torch.Generator().manual_seed(int(seed))
    starts = torch.randint(0, stream.numel() - seq_len + 1, (nsamples,), generator=gen)
    return torch.stack([stream[s : s + seq_len] for s in starts.tolist()])


def calibration_data(tokenizer: Any, source: str | Path | None = None, nsamples: int = 128, seq_len: int = 512,
                     seed: int = 0, max_len: int | None = None) -> Calibration:
    """Calibration windows from ``source`` (file, folder, saved dataset) or, if ``None``, the built-in corpus.

    ``max_len`` (the model's maximum sequence length) is checked before any text is read.
    """
    if max_len is not None and isinstance(seq_len, int) and seq_len > max_len:
        raise ValueError(f"seq_len={seq_len} is beyond the model's maximum sequence length {max_len}")
    texts = builtin_texts("train") if source is None else load_texts(source)
    ids = sample_windows(tokenize_stream(texts, tokenizer), nsamples, seq_len, seed)
    cls, sep = getattr(tokenizer, "cls_token_id", None), getattr(tokenizer, "sep_token_id", None)
    if cls is not None and sep is not None:  # encoders expect [CLS] ... [SEP]
        ids[:, 0], ids[:, -1] = cls, sep
    info = {"source": "builtin:stdlib-docstrings" if source is None else str(source), "nsamples": nsamples,
            "seq_len": seq_len, "seed": seed, "join": json.dumps(JOIN), "tokenizer": type(tokenizer).__name__}
    return Calibration(ids, info)
