"""A text corpus that needs no download: the docstrings of Python's standard library.

The corpus is read with ``ast`` from the ``.py`` files under ``sysconfig.get_paths()["stdlib"]``;
no module is imported. Order is deterministic (files sorted by relative path, then docstrings in
source order: module, classes, functions). Test folders and installed packages are skipped. The
content depends on the Python version, which ``corpus_info`` records.

Parsing the whole standard library takes seconds (5-15 s on a loaded 2-core machine), so the extracted
docstrings are kept in ``$PRUNEKIT_CACHE/corpus/`` (default ``~/.cache/prunekit``; one JSON file per
interpreter, stdlib folder and ``min_chars``, with a sha256 of its content checked on every read). A
missing, stale or corrupt file is rebuilt; a cache folder that cannot be written only costs the re-parse.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import logging
import math
import os
import sys
import sysconfig
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "lib2to3", "ensurepip"}
)
JOIN = "\n\n"
CACHE_VERSION = 2  # bump when the extraction rules or the file format change


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
    order (a docstring seen twice keeps its first file); disk-cached."""
    path, key = _cache_file(Path(root), min_chars)
    rows = _read_cache(path, key)
    if rows is None:
        rows = _extract_sourced(Path(root), min_chars)
        _write_cache(path, key, rows)
    return rows


def _extract_sourced(root: Path, min_chars: int) -> tuple[tuple[str, str, str], ...]:
    """Parse every source file under ``root``: ``(docstring, file, kind)`` of its distinct docstrings."""
    seen: set[str] = set()
    docs: list[tuple[str, str, str]] = []
    for path in _source_files(root):
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


def corpus_cache_dir() -> Path:
    """``$PRUNEKIT_CACHE/corpus`` (default ``~/.cache/prunekit/corpus``), the same root as the zoo's cache."""
    env = os.environ.get("PRUNEKIT_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "prunekit") / "corpus"


def _cache_file(root: Path, min_chars: int) -> tuple[Path, dict[str, object]]:
    """The cache file of ``root`` / ``min_chars`` and the key it must hold (interpreter, folder, its stamps)."""
    stamps = []
    for p in (root, root / "os.py", root / "ast.py"):
        try:
            st = p.stat()
            stamps.append([p.name, st.st_size if p.is_file() else 0, st.st_mtime_ns])
        except OSError:
            stamps.append([p.name, None, None])
    key = {"version": CACHE_VERSION, "python": sys.version, "root": str(root), "min_chars": min_chars,
           "stamps": stamps, "skip": sorted(SKIP_DIRS)}
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return corpus_cache_dir() / f"stdlib-docstrings-{name}.json", key


def _digest(rows: tuple[tuple[str, str, str], ...] | list[list[str]]) -> str:
    return hashlib.sha256(JOIN.join("\0".join(r) for r in rows).encode()).hexdigest()


def _read_cache(path: Path, key: dict[str, object]) -> tuple[tuple[str, str, str], ...] | None:
    """The cached rows, or ``None`` (logged) when the file is missing, for another key or corrupt."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.info("corpus cache %s unreadable (%s); re-parsing the standard library", path, e)
        return None
    obj = obj if isinstance(obj, dict) else {}
    rows = obj.get("docs")
    ok = isinstance(rows, list) and all(
        isinstance(r, list) and len(r) == 3 and all(isinstance(x, str) for x in r) for r in rows)
    if obj.get("key") != key or not ok or obj.get("sha256") != _digest(rows):
        log.info("corpus cache %s is stale or corrupt; re-parsing the standard library", path)
        return None
    return tuple((d, f, k) for d, f, k in rows)


def _write_cache(path: Path, key: dict[str, object], rows: tuple[tuple[str, str, str], ...]) -> None:
    """Store ``rows`` atomically; a folder that cannot be written is logged and skipped."""
    from ..io import atomic_write_text

    try:
        atomic_write_text(path, json.dumps({"key": key, "sha256": _digest(rows), "docs": [list(r) for r in rows]}))
    except OSError as e:
        log.info("corpus cache not written to %s (%s); the next run parses the standard library again", path, e)


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
