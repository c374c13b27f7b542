"""Name -> object registries, filled by decorators; a duplicate name is an error. Imports no torch.

``METHODS`` holds every method a user can name, one ``Entry`` each: one-shot criteria, calibrated
solvers (with the statistics they need), training methods, structured importances, data scores and
selectors, token methods. ``SCORES`` (weight criteria) and ``ALLOCATIONS`` (per-layer sparsity rules) are the
primitive tables the engines compose; ``Registry`` also serves the zoo's models and data sets.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

KINDS = ("oneshot", "calibrated", "training", "training-driver", "structured", "data-score", "data-selector",
         "token")
LABELS = {"oneshot": "one-shot method", "calibrated": "calibrated solver", "training": "training method",
          "training-driver": "training driver",
          "structured": "group importance", "data-score": "data score", "data-selector": "data selection rule",
          "token": "token method"}
STATS = ("gram", "input_norms")  # what a calibrated solver may ask for: X^T X, per-column ||X_j||_2
# the engine modules whose import registers methods (the only hand-written list)
ENGINES = ("prunekit.oneshot", "prunekit.training.pai", "prunekit.training.methods", "prunekit.calibrate.methods",
           "prunekit.structured.importance", "prunekit.structured.api", "prunekit.data.scores",
           "prunekit.data.cluster", "prunekit.data.select", "prunekit.tokens.methods")


class Registry:
    """A named table of functions or config classes of one kind (e.g. "score", "model")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that files the decorated object under ``name``."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> Any:
        """The object filed under ``name``; the error lists the accepted names."""
        if not isinstance(name, str) or name not in self._items:
            raise ValueError(f"unknown {self.kind} {name!r}; accepted: {', '.join(sorted(self._items))}")
        return self._items[name]

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items


@dataclass(frozen=True)
class Entry:
    """One nameable method: its unique ``name``, ``kind``, the registered ``obj`` and its ``config`` class.

    ``obj`` is ``fn(model, config, data) -> Report`` (one-shot, calibrated), a builder
    ``fn(sparsity, **options) -> list[Callback]`` (training), a driver ``fn(model, config, data, **recipe)``
    that runs ``fit`` itself, several times (training-driver: IMP), a group score (structured), a data
    score or a selector. ``stats`` names the statistics a calibrated solver needs (``STATS``). ``aliases``
    are other spellings accepted within the same kind (old names, kept so saved JSON keeps loading).
    """

    name: str
    kind: str
    obj: Any
    config: Any = None
    stats: tuple[str, ...] = ()
    summary: str = ""
    aliases: tuple[str, ...] = ()


class MethodRegistry:
    """Every nameable method; names are unique across kinds, aliases unique within their kind."""

    def __init__(self, engines: tuple[str, ...] = ENGINES) -> None:
        self._entries: dict[str, Entry] = {}
        self.engines, self._loaded = tuple(engines), False

    def register(self, name: str, *, kind: str, config: Any = None, stats: tuple[str, ...] = (),
                 summary: str | None = None, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator filing the decorated object as method ``name`` of ``kind``."""
        _check_entry(name, kind, stats, aliases)

        def deco(obj: T) -> T:
            self._add(Entry(name, kind, obj, config, tuple(stats), summary or _first_line(obj, config),
                            tuple(aliases)))
            if config is not None and isinstance(getattr(config, "type_name", None), str):
                config.type_name = name  # a Config's JSON "type" is its method's name
            return obj

        return deco

    def _add(self, entry: Entry) -> None:
        if entry.name in self._entries:
            old = self._entries[entry.name]
            raise ValueError(f"method {entry.name!r} is registered twice ({old.kind} and {entry.kind})")
        taken = set(self.spellings(entry.kind, load=False))
        for s in entry.aliases:
            if s in taken or s == entry.name:
                raise ValueError(f"{LABELS[entry.kind]} alias {s!r} of {entry.name!r} is already taken")
        if entry.name in taken:
            raise ValueError(f"method {entry.name!r} is already an alias of another {LABELS[entry.kind]}")
        self._entries[entry.name] = entry

    def get(self, name: str, kind: str | None = None) -> Entry:
        """The entry named ``name`` (or an alias; within ``kind`` if given); unknown -> ValueError listing names.

        Within a ``kind``, a name or alias already registered there is the answer without importing the
        other engines (names are unique across kinds and aliases within theirs, so no later registration
        can change it): the CLI's calibrated path then skips the one-shot, structured and data engines.
        """
        if kind is not None and not self._loaded:
            _check_kind(kind)
            for e in self.entries(kind, load=False):
                if name == e.name or name in e.aliases:
                    return e
        self._ensure_loaded()
        if kind is not None:
            _check_kind(kind)
            for e in self.entries(kind):
                if name == e.name or name in e.aliases:
                    return e
            raise ValueError(f"unknown {LABELS[kind]} {name!r}; accepted: {', '.join(self.spellings(kind))}")
        if isinstance(name, str) and name in self._entries:
            return self._entries[name]
        hits = [e for e in self._entries.values() if name in e.aliases]
        if len(hits) > 1:
            raise ValueError(f"method {name!r} is ambiguous: it is an old spelling of "
                             f"{', '.join(f'{e.name} ({e.kind})' for e in hits)}; give the full name")
        if not hits:
            raise ValueError(f"unknown method {name!r}; accepted: {', '.join(self.names())}")
        return hits[0]

    def kind(self, name: str) -> str:
        """The kind of method ``name`` (one of ``KINDS``)."""
        return self.get(name).kind

    def config(self, name: str, kind: str | None = None) -> Any:
        """The config class of method ``name`` (``None`` for a method without options)."""
        return self.get(name, kind).config

    def names(self, kind: str | None = None) -> list[str]:
        """Registered names (of ``kind`` if given), sorted; aliases are not listed."""
        return sorted(e.name for e in self.entries(kind))

    def spellings(self, kind: str, load: bool = True) -> list[str]:
        """Every accepted spelling within ``kind``: names and aliases, sorted."""
        return sorted({s for e in self.entries(kind, load) for s in (e.name, *e.aliases)})

    def entries(self, kind: str | None = None, load: bool = True) -> list[Entry]:
        """The entries (of ``kind`` if given), in name order."""
        if load:
            self._ensure_loaded()
        if kind is not None:
            _check_kind(kind)
        return [e for _, e in sorted(self._entries.items()) if kind is None or e.kind == kind]

    def view(self, kind: str) -> KindView:
        """The methods of one kind as a plain name -> object table (``get`` returns the object)."""
        return KindView(self, kind)

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True  # first: an engine module that looks names up while importing must not recurse
            try:
                load_all(self.engines)
            except BaseException:
                self._loaded = False
                raise

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._entries or any(name in e.aliases for e in self._entries.values())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


class KindView:
    """One kind of ``METHODS`` with the old ``Registry`` surface: ``register``, ``get`` (the object), ``names``."""

    def __init__(self, methods: MethodRegistry, kind: str) -> None:
        _check_kind(kind)
        self.methods, self.kind = methods, kind

    def register(self, name: str, **kw: Any) -> Callable[[T], T]:
        """Decorator filing the decorated object as method ``name`` of this kind."""
        return self.methods.register(name, kind=self.kind, **kw)

    def get(self, name: str) -> Any:
        """The object filed under ``name`` or an alias of it in this kind."""
        return self.methods.get(name, self.kind).obj

    def entry(self, name: str) -> Entry:
        """The entry filed under ``name`` or an alias of it in this kind."""
        return self.methods.get(name, self.kind)

    def names(self) -> list[str]:
        """Every accepted spelling in this kind (names and aliases), sorted."""
        return self.methods.spellings(self.kind)

    def __contains__(self, name: object) -> bool:
        return name in self.names()


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown method kind {kind!r}; accepted: {', '.join(KINDS)}")


def _check_entry(name: str, kind: str, stats: tuple[str, ...], aliases: tuple[str, ...]) -> None:
    _check_kind(kind)
    if not isinstance(name, str) or not name:
        raise ValueError(f"a method name must be a non-empty string, got {name!r}")
    if isinstance(aliases, str) or isinstance(stats, str):
        raise ValueError(f"aliases and stats of {name!r} must be tuples of strings, not one string")
    bad = [s for s in stats if s not in STATS]
    if bad:
        raise ValueError(f"unknown statistics {bad} for {name!r}; accepted: {', '.join(STATS)}")


def _first_line(obj: Any, config: Any) -> str:
    doc = (getattr(config, "__doc__", None) if config is not None else None) or getattr(obj, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def load_all(engines: tuple[str, ...] = ENGINES) -> None:
    """Import every engine module that registers methods (``ENGINES``), so ``METHODS`` is complete."""
    for module in engines:
        importlib.import_module(module)


SCORES = Registry("score")
ALLOCATIONS = Registry("allocation")
METHODS = MethodRegistry()
