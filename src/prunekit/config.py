"""Config base: a dataclass that round-trips through JSON ``{"type", "version", ...}`` and validates."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar

from .patterns import NM, Block, Channel, Pattern, Unstructured, parse_pattern
from .registry import Registry

CONFIGS = Registry("method config")
PATTERN_TYPES = (Unstructured, NM, Block, Channel)


def register_config(name: str):
    """Class decorator: file a config dataclass under ``name`` (its JSON ``type``)."""

    def deco(cls):
        cls.type_name = name
        return CONFIGS.register(name)(cls)

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
