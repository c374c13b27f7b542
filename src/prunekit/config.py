"""Config base: a dataclass that round-trips through JSON ``{"type", "version", ...}`` and validates."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar

from .patterns import NM, Block, Channel, Pattern, Unstructured, parse_pattern
from .registry import METHODS

PATTERN_TYPES = (Unstructured, NM, Block, Channel)


class _ConfigView:
    """The config classes of ``METHODS`` by name (the former ``CONFIGS`` table, now a view of the registry)."""

    kind = "method config"

    def get(self, name: str) -> type[Config]:
        """The config class of method ``name`` (or an old spelling of it); the error lists the accepted types."""
        try:
            cls = METHODS.config(name)
        except ValueError:
            cls = None
        if not (isinstance(cls, type) and issubclass(cls, Config)):
            raise ValueError(f"unknown method config {name!r}; accepted: {', '.join(self.names())}")
        return cls

    def names(self) -> list[str]:
        """Names of the methods configured by a ``Config`` (what a JSON ``type`` may say), sorted."""
        return [e.name for e in METHODS.entries() if isinstance(e.config, type) and issubclass(e.config, Config)]

    def __contains__(self, name: object) -> bool:
        return name in self.names()


CONFIGS = _ConfigView()


def register_config(name: str):
    """Deprecated: set a config's JSON ``type``; file it with ``METHODS.register(name, kind=..., config=cls)``."""

    def deco(cls):
        cls.type_name = name
        return cls

    return deco


@dataclasses.dataclass
class Config:
    """Base of method configs. Subclasses are dataclasses with JSON-able fields and a ``validate``."""

    type_name: ClassVar[str] = "config"
    version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name == "pattern":
                self.pattern = parse_pattern(self.pattern)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field and its accepted values."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type_name, "version": self.version}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = str(v) if isinstance(v, PATTERN_TYPES) else _jsonable(v)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Config:
        """Rebuild any registered config from its dict; unknown types and fields are errors."""
        if not isinstance(d, dict) or "type" not in d:
            raise ValueError(f"a method config must be a JSON object with a 'type' key, got {d!r}")
        cls = CONFIGS.get(d["type"])
        version = d.get("version", cls.version)
        if version != cls.version:
            raise ValueError(f"config {d['type']!r} has version {version}, this prunekit reads version {cls.version}")
        names = {f.name for f in dataclasses.fields(cls)}
        extra = set(d) - names - {"type", "version"}
        if extra:
            raise ValueError(f"unknown fields for {d['type']!r}: {sorted(extra)}; accepted: {sorted(names)}")
        return cls(**{k: v for k, v in d.items() if k in names})

    @staticmethod
    def from_json(text: str) -> Config:
        return Config.from_dict(json.loads(text))


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, PATTERN_TYPES):
        return str(v)
    return v


def pattern_of(cfg: Any) -> Pattern:
    """The pattern of a config (``Unstructured()`` if it has none)."""
    return getattr(cfg, "pattern", Unstructured())
