"""A text corpus that needs no download: the docstrings of Python's standard library.

The corpus is read with ``ast`` from the ``.py`` files under ``sysconfig.get_paths()["stdlib"]``;
no module is imported. Order is deterministic (files sorted by relative path, then docstrings in
source order: module, classes, functions). Test folders and installed packages are skipped. The
content depends on the Python version, which ``corpus_info`` records.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import logging
import math
import sys
import sysconfig
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "lib2to3", "ensurepip"}
)
JOIN = "\n\n"


def stdlib_root() -> Path:
    """Folder of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def _source_files(root: Path) -> list[Path]:
    """``.py`` files under ``root`` sorted by relative path, skipping tests and installed packages."""
    files = [p for p in root.rglob("*.py") if not SKIP_DIRS.intersection(p.relative_to(root).parts[:-1])]
    files = [p for p in files if not p.name.startswith("test_")]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


KINDS = {ast.Module: "module", ast.ClassDef: "class", ast.FunctionDef: "function", ast.AsyncFunctionDef: "function"}


def _docstrings(source: str) -> list[tuple[str, str]]:
    """``(kind, docstring)`` of a module, its classes and functions (kind ``module|class|function``), in source
    order."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences in old files
        tree = ast.parse(source)
    nodes = [tree] + [
        n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    nodes.sort(key=lambda n: getattr(n, "lineno", 0))
    out = []
    for n in nodes:
        doc = ast.get_docstring(n, clean=True)
        if doc:
            out.append((KINDS[type(n)], doc.strip()))
    return out


@functools.lru_cache(maxsize=4)
def _all_sourced(root: str, min_chars: int) -> tuple[tuple[str, str, str], ...]:
    """``(docstring, file, kind)`` of every distinct docstring of at least ``min_chars`` characters, in corpus
    order (a docstring seen twice keeps its first file)."""
    seen: set[str] = set()
    docs: list[tuple[str, str, str]] = []
    for path in _source_files(Path(root)):
        try:
            source = path.read_text(encoding="utf-8")
            found = _docstrings(source)
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError) as e:
            log.debug("skipping %s: %s", path, e)
            continue
        rel = path.relative_to(root).as_posix()
        for kind, d in found:
            if len(d) >= min_chars and d not in seen:
                seen.add(d)
                docs.append((d, rel, kind))
    return tuple(docs)


def _all_docs(root: str, min_chars: int) -> tuple[str, ...]:
    """Every distinct docstring of at least ``min_chars`` characters, deterministic order."""
    return tuple(d for d, _, _ in _all_sourced(root, min_chars))


def stdlib_corpus(max_docs: int | None = None, min_chars: int = 200) -> list[str]:
    """Docstrings of the standard library (at least ``min_chars`` long), the first ``max_docs`` of them."""
    if max_docs is not None and (isinstance(max_docs, bool) or not isinstance(max_docs, int) or max_docs < 1):
        raise ValueError(f"max_docs must be a positive integer or None, got {max_docs!r}")
    if isinstance(min_chars, bool) or not isinstance(min_chars, int) or min_chars < 1:
        raise ValueError(f"min_chars must be a positive integer, got {min_chars!r}")
    docs = _all_docs(str(stdlib_root()), min_chars)
    if not docs:
        raise ValueError(f"no docstring of at least min_chars={min_chars} characters under {stdlib_root()}")
    return list(docs if max_docs is None else docs[:max_docs])


def stdlib_sources(max_docs: int | None = None, min_chars: int = 200) -> list[tuple[str, str, str]]:
    """``stdlib_corpus`` with where each docstring comes from: ``(docstring, file, kind)``, ``file`` relative
    to the standard library (``email/parser.py``), ``kind`` one of ``module``, ``class``, ``function``."""
    docs = stdlib_corpus(max_docs, min_chars)  # checks the arguments
    return list(_all_sourced(str(stdlib_root()), min_chars)[: len(docs)])


def _rank(doc: str, seed: int) -> str:
    """A per-document hash, salted by ``seed``: the split order."""
    return hashlib.sha256(f"{seed}\0{doc}".encode()).hexdigest()


def train_val_split(docs: list[str], val_fraction: float = 0.1, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split documents into (train, validation), deterministic under ``seed``; both keep input order.

    The ``ceil(val_fraction * n)`` documents with the lowest salted hash go to validation, so a
    document's side does not depend on its position in the list.
    """
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, (int, float))
        or not 0 < val_fraction < 1
    ):
        raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    if len(docs) < 2:
        raise ValueError(f"docs must hold at least 2 documents to split, got {len(docs)}")
    n_val = min(len(docs) - 1, max(1, math.ceil(val_fraction * len(docs) - 1e-9)))
    order = sorted(range(len(docs)), key=lambda i: (_rank(docs[i], seed), i))
    val_idx = set(order[:n_val])
    train = [d for i, d in enumerate(docs) if i not in val_idx]
    val = [d for i, d in enumerate(docs) if i in val_idx]
    return train, val


def corpus_info(min_chars: int = 200) -> dict[str, object]:
    """What the built-in corpus is made of (stored with results so numbers can be traced)."""
    docs = stdlib_corpus(min_chars=min_chars)
    digest = hashlib.sha256(JOIN.join(docs).encode()).hexdigest()[:16]
    return {
        "name": "stdlib-docstrings",
        "python": ".".join(map(str, sys.version_info[:3])),
        "min_chars": min_chars,
        "n_docs": len(docs),
        "n_chars": sum(map(len, docs)),
        "sha256_16": digest,
    }
