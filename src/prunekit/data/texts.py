"""Text pools for data pruning: ``.jsonl`` (one JSON object per line) or ``.txt`` (one document per line)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_texts(path: str | os.PathLike, text_field: str = "text") -> list[str]:
    """Documents from ``.jsonl`` (field ``text_field``) or ``.txt`` (one per non-empty line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file {str(path)!r} does not exist")
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
