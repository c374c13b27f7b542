"""Results store: every run of every sweep as one row of an SQLite table.

One table ``runs``; the schema version lives in SQLite's ``PRAGMA user_version``. A run is found
again by its ``run_key``: the sha256 of the canonical JSON of ``{"experiment", "kind", "config"}``
(the config holds the seed), so a sweep that stops can start again and skip what is stored.
The record is generic: model pruning, data pruning, LLM and structured runs all fit, told apart
by ``kind`` and carrying free-form ``metrics``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import logging
import os
import platform
import sqlite3
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import folder_writable, is_read_only

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_DB = "prunekit-results.sqlite"
KINDS = ("model", "data", "llm", "structured", "federated")
_JSON_COLUMNS = ("config", "metrics", "per_layer", "timings", "environment")
_COLUMNS = ("id", "run_key", "experiment", "kind", *_JSON_COLUMNS, "code_version", "created_at")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_key TEXT NOT NULL UNIQUE,
    experiment TEXT NOT NULL,
    kind TEXT NOT NULL,
    config TEXT NOT NULL,
    metrics TEXT NOT NULL,
    per_layer TEXT NOT NULL,
    timings TEXT NOT NULL,
    environment TEXT NOT NULL,
    code_version TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_experiment ON runs (experiment);
"""


class ResultsStoreError(ValueError):
    """The results database cannot be used (read-only, corrupt, not ours); the message says what to do."""


class DuplicateRunError(ValueError):
    """A run with this ``run_key`` is stored already."""


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no spaces: equal configs give equal text."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"config must hold only JSON values (str, number, bool, null, list, dict): {e}") \
            from e


def run_key(experiment: str, config: Mapping[str, Any], kind: str = "model") -> str:
    """The resume key of a run: sha256 of the canonical JSON of its experiment, kind and config."""
    text = canonical_json({"experiment": experiment, "kind": kind, "config": dict(config)})
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class RunRecord:
    """One run: what was asked (``config``), what came out (``metrics``, ``per_layer``, ``timings``)."""

    experiment: str
    config: dict[str, Any]
    kind: str = "model"
    metrics: dict[str, Any] = field(default_factory=dict)
    per_layer: dict[str, float] = field(default_factory=dict)  # layer name -> sparsity
    timings: dict[str, float] = field(default_factory=dict)  # prune_s, train_s, finetune_s, total_s
    environment: dict[str, Any] | None = None  # filled by ResultsStore.add when None
    code_version: str | None = None  # filled by ResultsStore.add when None
    created_at: str | None = None  # filled by ResultsStore.add when None

    def __post_init__(self) -> None:
        if not isinstance(self.experiment, str) or not self.experiment:
            raise ValueError(f"experiment must be a non-empty string, got {self.experiment!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {self.kind!r}")
        for name in ("config", "metrics", "per_layer", "timings"):
            if not isinstance(getattr(self, name), Mapping):
                raise TypeError(f"{name} must be a dict, got {type(getattr(self, name)).__name__}")
        canonical_json(self.config)  # raises before anything is stored

    @property
    def run_key(self) -> str:
        """The resume key (see ``run_key``)."""
        return run_key(self.experiment, self.config, self.kind)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """prunekit's version, plus ``git describe`` when run from a checkout (quietly skipped otherwise)."""
    try:
        from importlib.metadata import version

        ver = version("prunekit")
    except Exception:  # not installed: running from a source tree
        ver = "unknown"
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"], cwd=here, capture_output=True, text=True,
            timeout=5, check=True,
        )
        desc = out.stdout.strip()
    except Exception:  # no git, not a checkout, or git failed: the version alone is fine
        desc = ""
    return f"{ver}+git.{desc}" if desc else ver


def environment() -> dict[str, Any]:
    """Python, torch, platform, CPU count and torch threads of this process."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch

        env.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                   cuda=torch.cuda.is_available())
    except Exception:  # torch missing is not this module's problem
        env["torch"] = None
    return env


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


_read_only = is_read_only  # older name


def check_db_writable(path: str | os.PathLike[str]) -> Path:
    """Raise ``ResultsStoreError`` if the database at ``path`` or its folder cannot be written."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"db must be a path (str or os.PathLike), got {type(path).__name__}")
    p = Path(path).expanduser()
    folder = p.parent.resolve()
    name, fname = repr(str(p)), repr(str(folder))
    if p.is_dir():
        raise ResultsStoreError(f"results database {name} is a folder; pass a file path (e.g. {DEFAULT_DB})")
    if not folder.exists():
        raise ResultsStoreError(f"folder {fname} of results database {name} does not exist; create it "
                                "or pass another --db path")
    if p.exists() and _read_only(p):
        raise ResultsStoreError(f"results database {name} is read-only; make it writable (chmod u+w) "
                                "or pass another --db path")
    if not folder_writable(folder):
        raise ResultsStoreError(f"folder {fname} of results database {name} is read-only (SQLite writes its "
                                "journal beside the database); make it writable or pass another --db path")
    return p


def _check_readable(path: str | os.PathLike[str]) -> Path:
    """Raise ``ResultsStoreError`` unless ``path`` is an existing file."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"db must be a path (str or os.PathLike), got {type(path).__name__}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise ResultsStoreError(f"no results database at {str(p)!r}; run `prunekit bench` first or pass --db")
    return p


class ResultsStore:
    """An SQLite file of runs (WAL mode); open it before any work so a bad path fails first."""

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_DB, readonly: bool = False,
                 timeout: float = 30.0) -> None:
        self.path = _check_readable(path) if readonly else check_db_writable(path)
        self.readonly = readonly
        try:
            if readonly and (_read_only(self.path) or _read_only(self.path.parent.resolve())):
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, timeout=timeout)
            else:  # a writable file opens read-write so that closing it cleans up the WAL files
                self._db = sqlite3.connect(self.path, timeout=timeout)
            if readonly:
                self._db.execute("PRAGMA query_only = ON")
            self._check()
            if not readonly:
                self._init()
        except sqlite3.DatabaseError as e:
            self._close_quietly()
            raise ResultsStoreError(
                f"{str(self.path)!r} is not a usable prunekit results database (SQLite says: {e}); "
                "move it away or pass another --db path"
            ) from e
        except ResultsStoreError:
            self._close_quietly()
            raise

    def _check(self) -> None:
        name = repr(str(self.path))
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        user_tables = tables - {"sqlite_sequence"}
        if user_tables and "runs" not in user_tables:
            raise ResultsStoreError(f"{name} is an SQLite file but not a prunekit results database "
                                    f"(tables: {sorted(user_tables)}); pass another --db path")
        if version > SCHEMA_VERSION:
            raise ResultsStoreError(f"{name} has schema version {version}; this prunekit reads up to "
                                    f"{SCHEMA_VERSION}: upgrade prunekit or pass another --db path")
        if "runs" in tables:
            cols = {r[1] for r in self._db.execute("PRAGMA table_info(runs)")}
            if not set(_COLUMNS) <= cols:
                raise ResultsStoreError(f"{str(self.path)!r} has a 'runs' table without the columns "
                                        f"{sorted(set(_COLUMNS) - cols)}; pass another --db path")
        elif self.readonly:
            raise ResultsStoreError(f"{str(self.path)!r} holds no runs yet; run `prunekit bench` first")

    def _init(self) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        with self._db:
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _close_quietly(self) -> None:
        try:
            self._db.close()
        except Exception:  # closing a broken connection may fail again; nothing to save
            pass

    def close(self) -> None:
        """Close the connection (the file stays consistent either way)."""
        self._db.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, key: str) -> bool:
        """True if a run with this ``run_key`` is stored."""
        return self._db.execute("SELECT 1 FROM runs WHERE run_key = ?", (key,)).fetchone() is not None

    def add(self, record: RunRecord | Mapping[str, Any], replace: bool = False) -> int:
        """Store one run (a ``RunRecord`` or a dict of its fields); returns its row id.

        A run whose key is stored already is an error unless ``replace=True``.
        """
        rec = record if isinstance(record, RunRecord) else RunRecord(**dict(record))
        key = rec.run_key
        row = {
            "run_key": key, "experiment": rec.experiment, "kind": rec.kind,
            "config": canonical_json(rec.config),
            "metrics": json.dumps(rec.metrics, sort_keys=True),
            "per_layer": json.dumps(rec.per_layer, sort_keys=True),
            "timings": json.dumps(rec.timings, sort_keys=True),
            "environment": json.dumps(rec.environment if rec.environment is not None else environment()),
            "code_version": rec.code_version or code_version(),
            "created_at": rec.created_at or _now(),
        }
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        sql = f"{verb} INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})"
        try:
            with self._db:
                cur = self._db.execute(sql, tuple(row.values()))
        except sqlite3.IntegrityError as e:
            raise DuplicateRunError(f"run {key[:12]} of experiment {rec.experiment!r} is stored already; "
                                    "pass replace=True to overwrite it") from e
        log.debug("stored run %s (%s)", key[:12], rec.experiment)
        return int(cur.lastrowid)

    def _select(self, experiment: str | None, kind: str | None) -> Iterator[dict[str, Any]]:
        where, args = [], []
        for col, val in (("experiment", experiment), ("kind", kind)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        sql = f"SELECT {', '.join(_COLUMNS)} FROM runs"
        sql += f" WHERE {' AND '.join(where)}" if where else ""
        for values in self._db.execute(sql + " ORDER BY id", args):
            row = dict(zip(_COLUMNS, values))
            for col in _JSON_COLUMNS:
                row[col] = json.loads(row[col])
            yield row

    def runs(self, experiment: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        """Stored runs (oldest first) as dicts with the JSON columns parsed."""
        return list(self._select(experiment, kind))

    def experiments(self) -> list[str]:
        """Names of the stored experiments, sorted."""
        return [r[0] for r in self._db.execute("SELECT DISTINCT experiment FROM runs ORDER BY experiment")]

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    def to_rows(self, experiment: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        """Flat rows for tables: id, experiment, kind, the config's scalars, metrics and timings."""
        return [flatten_run(r) for r in self._select(experiment, kind)]


def flatten_run(run: Mapping[str, Any]) -> dict[str, Any]:
    """One flat dict per run: scalar config fields, then metrics, then timings (first key wins)."""
    out: dict[str, Any] = {k: run[k] for k in ("id", "experiment", "kind", "created_at")}
    for part in (run["config"], run["metrics"], run["timings"]):
        for k, v in part.items():
            if isinstance(v, (str, int, float, bool)) or v is None:
                out.setdefault(k, v)
    return out
