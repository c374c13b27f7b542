"""Configs of the calibrated post-training methods: ``SparseGPT``, ``Wanda`` and their add-ons."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor

from ..config import Config
from ..patterns import NM, Pattern, Unstructured, pattern_sparsity
from . import solvers as S
from .stats import LayerStats


def _positive_int(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return v


def _number(v: Any, name: str, lo: float, hi: float, lo_open: bool = False) -> float:
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and (lo < v if lo_open else lo <= v) and v <= hi
    if not ok:
        raise ValueError(f"{name} must be a number in {'(' if lo_open else '['}{lo}, {hi}], got {v!r}")
    return float(v)


@dataclass
class OWLConfig:
    """OWL allocation (Yin et al. 2024): outlier threshold ``m`` (times the block mean) and spread ``lam``."""

    m: float = 5.0
    lam: float = 0.08

    def __post_init__(self) -> None:
        self.m = _number(self.m, "owl.m", 0.0, 1e6, lo_open=True)
        self.lam = _number(self.lam, "owl.lam", 0.0, 0.99)


@dataclass
class DSnoTConfig:
    """DSnoT refinement (Zhang et al. 2024): swap cycles, stop threshold, variance power, sign rule, skips."""

    max_cycles: int = 50
    threshold: float = 0.1
    gamma: float = 1.0
    same_sign: bool = True
    skip: list[str] = field(default_factory=list)  # layer-name suffixes left unrefined, e.g. ["mlp"]

    def __post_init__(self) -> None:
        _positive_int(self.max_cycles, "dsnot.max_cycles")
        self.threshold = _number(self.threshold, "dsnot.threshold", 0.0, 1e12)
        self.gamma = _number(self.gamma, "dsnot.gamma", 0.0, 10.0)
        if not isinstance(self.same_sign, bool):
            raise ValueError(f"dsnot.same_sign must be true or false, got {self.same_sign!r}")
        if isinstance(self.skip, str) or not all(isinstance(s, str) for s in self.skip):
            raise ValueError(f"dsnot.skip must be a list of layer-name parts, got {self.skip!r}")
        self.skip = list(self.skip)


def as_owl(v: Any) -> OWLConfig | None:
    """``None``/``False`` -> no OWL; ``True`` -> defaults; a dict or ``OWLConfig`` as given."""
    return _as(v, OWLConfig, "owl")


def as_dsnot(v: Any) -> DSnoTConfig | None:
    """``None``/``False`` -> no DSnoT; ``True`` -> defaults; a dict or ``DSnoTConfig`` as given."""
    return _as(v, DSnoTConfig, "dsnot")


def _as(v: Any, cls: type, name: str) -> Any:
    if v is None or v is False:
        return None
    if v is True:
        return cls()
    if isinstance(v, cls):
        return v
    if isinstance(v, dict):
        names = {f.name for f in dataclasses.fields(cls)}
        if set(v) - names:
            raise ValueError(f"unknown {name} fields {sorted(set(v) - names)}; accepted: {sorted(names)}")
        return cls(**v)
    raise ValueError(f"{name} must be None, True, a dict or {cls.__name__}, got {v!r}")


@dataclass
class Calibrated(Config):
    """Base of the calibrated methods (layer-by-layer over transformer blocks): shared fields and defaults.

    A subclass names its solver in :meth:`solve`; ``reconstructs`` says whether the solver updates the
    kept weights (then a refined mask, e.g. DSnoT's, is solved again rather than applied as is).
    ``error_report``: the per-layer relative reconstruction error tr(ΔW H ΔW^T) / tr(W H W^T) needs
    H = X^T X; ``None`` (default) reports it only when the solver gathers H anyway (SparseGPT), ``True``
    gathers H for any solver (costly for Wanda: an (in, in) accumulation per layer), ``False`` never.
    """

    reconstructs: ClassVar[bool] = False

    sparsity: float | None = None
    pattern: Pattern = field(default_factory=Unstructured)
    owl: OWLConfig | None = None
    dsnot: DSnoTConfig | None = None
    batch_size: int = 8
    error_report: bool | None = None  # None: only where the solver's statistics hold X^T X; True: always
    max_layer_sparsity: float = 0.99
    exclude: list[str] = field(default_factory=lambda: ["lm_head"])

    def validate(self) -> None:
        if not isinstance(self.pattern, (Unstructured, NM)):
            raise ValueError(f"pattern must be unstructured or N:M (e.g. '2:4') for {self.type_name}, "
                             f"got {self.pattern}")
        self.sparsity = pattern_sparsity(self.pattern, self.sparsity)
        self.owl, self.dsnot = as_owl(self.owl), as_dsnot(self.dsnot)
        if self.owl is not None and isinstance(self.pattern, NM):
            raise ValueError("owl needs pattern=Unstructured(): OWL allocates a different sparsity per layer")
        _positive_int(self.batch_size, "batch_size")
        if self.error_report not in (None, True, False):
            raise ValueError(f"error_report must be None, true or false, got {self.error_report!r}")
        _number(self.max_layer_sparsity, "max_layer_sparsity", 0.0, 1.0, lo_open=True)
        if self.sparsity > self.max_layer_sparsity:
            raise ValueError(f"sparsity={self.sparsity} is above max_layer_sparsity={self.max_layer_sparsity}")
        self.exclude = list(self.exclude)

    def solve(self, W: Tensor, stats: LayerStats, sparsity: float, pattern: Pattern, name: str,
              mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(W_new, mask)`` of one weight ``(out, in)`` at ``sparsity``; ``mask`` fixes the kept set if given."""
        raise NotImplementedError(f"{type(self).__name__} names no solver")

    @classmethod
    def from_config(cls, config: Config) -> Calibrated:
        """This method's config from another config's shared fields; fields it lacks must be at their defaults."""
        if isinstance(config, cls):
            return config
        mine = {f.name for f in dataclasses.fields(cls)}
        theirs = {f.name: f for f in dataclasses.fields(config)}
        for k, f in theirs.items():
            if k not in mine and getattr(config, k) != _default(f):
                raise ValueError(f"{k}={getattr(config, k)!r} of {config.type_name} is not supported by calibrated "
                                 f"pruning ({cls.type_name}); accepted fields: {', '.join(sorted(mine))}")
        return cls(**{k: getattr(config, k) for k in theirs if k in mine})

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        for k in ("owl", "dsnot"):
            v = getattr(self, k)
            out[k] = None if v is None else dataclasses.asdict(v)
        return out


@dataclass
class SparseGPT(Calibrated):
    """SparseGPT (Frantar & Alistarh 2023): OBS reconstruction with the Hessian X^T X, lazy block updates."""

    reconstructs: ClassVar[bool] = True

    blocksize: int = 128
    percdamp: float = 0.01
    escalations: int = 4

    def validate(self) -> None:
        super().validate()
        _positive_int(self.blocksize, "blocksize")
        self.percdamp = _number(self.percdamp, "percdamp", 0.0, 10.0, lo_open=True)
        if isinstance(self.escalations, bool) or not isinstance(self.escalations, int) or self.escalations < 0:
            raise ValueError(f"escalations must be an integer >= 0, got {self.escalations!r}")
        if isinstance(self.pattern, NM) and self.blocksize % self.pattern.m:
            raise ValueError(f"blocksize={self.blocksize} must be a multiple of m={self.pattern.m} for {self.pattern}")

    def solve(self, W: Tensor, stats: LayerStats, sparsity: float, pattern: Pattern, name: str,
              mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """SparseGPT's Alg. 1 on one weight (``solvers.sparsegpt``)."""
        return S.sparsegpt(W, stats, sparsity, pattern, blocksize=self.blocksize, percdamp=self.percdamp, mask=mask,
                           escalations=self.escalations, name=name)


@dataclass
class Wanda(Calibrated):
    """Wanda (Sun et al. 2024): |W_ij| * ||X_j||_2 compared within each output row, no weight update."""

    def solve(self, W: Tensor, stats: LayerStats, sparsity: float, pattern: Pattern, name: str,
              mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Wanda's Eq. 1 on one weight (``solvers.wanda``); a given ``mask`` is applied as is."""
        if mask is not None:
            return W * mask, mask
        return S.wanda(W, stats, sparsity, pattern, name=name)


@dataclass
class CalibratedMagnitude(Calibrated):
    """Magnitude |W| through the calibration engine (so OWL, DSnoT and the error report apply)."""

    scope: str = "layer"

    def validate(self) -> None:
        super().validate()
        if self.scope not in ("layer", "row"):
            raise ValueError(f"scope must be 'layer' or 'row' for calibrated magnitude, got {self.scope!r}")

    def solve(self, W: Tensor, stats: LayerStats, sparsity: float, pattern: Pattern, name: str,
              mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """|W| per layer or per row (``solvers.magnitude``); a given ``mask`` is applied as is."""
        if mask is not None:
            return W * mask, mask
        return S.magnitude(W, stats, sparsity, pattern, scope=self.scope, name=name)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING
