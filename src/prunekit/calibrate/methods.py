"""The calibrated methods as registered ``prune_`` functions: ``fn(model, config, data) -> Report``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from ..masks import Report
from ..patterns import Pattern
from ..registry import METHODS
from . import solvers as S
from .config import Calibrated, CalibratedMagnitude, SparseGPT, Wanda, _number, _positive_int
from .engine import prune_blocks
from .stats import LayerStats


def _need_data(data: Any, what: str) -> Any:
    if data is None:
        raise ValueError(
            f"{what} needs calibration data: pass data=prunekit.calibrate.calibration_data(tokenizer) "
            "(or token ids shaped (N, L))"
        )
    return data


@METHODS.register("sparsegpt", kind="calibrated", config=SparseGPT, stats=("gram",))
def prune_sparsegpt(model: nn.Module, config: SparseGPT, data: Any = None) -> Report:
    """SparseGPT on every transformer block of ``model`` (Frantar & Alistarh 2023)."""
    return prune_blocks(model, "sparsegpt", config, _need_data(data, "SparseGPT"))


@METHODS.register("wanda", kind="calibrated", config=Wanda, stats=("input_norms",))
def prune_wanda(model: nn.Module, config: Wanda, data: Any = None) -> Report:
    """Wanda on every transformer block of ``model`` (Sun et al. 2024)."""
    return prune_blocks(model, "wanda", config, _need_data(data, "Wanda"))


@METHODS.register("calibrated-magnitude", kind="calibrated", config=CalibratedMagnitude,
                  aliases=("calibrated_magnitude", "magnitude"))
def prune_calibrated_magnitude(model: nn.Module, config: Any, data: Any = None) -> Report:
    """Magnitude through the calibration engine (``prunekit.Magnitude`` or ``CalibratedMagnitude``)."""
    return prune_blocks(model, "calibrated-magnitude", config, _need_data(data, "calibrated magnitude"))


@dataclass
class ALPS(Calibrated):
    """ALPS (Meng et al. 2024): ADMM with an increasing penalty for the support, then PCG on the kept weights.

    ``rho0``: first penalty (on the Hessian scaled to unit mean diagonal); ``iters``: ADMM iterations at most;
    ``cg_iters``: conjugate-gradient steps of the refinement; ``percdamp``: diagonal damping.
    """

    reconstructs: ClassVar[bool] = True

    rho0: float = 0.1
    iters: int = 300
    cg_iters: int = 50
    percdamp: float = 0.01

    def validate(self) -> None:
        super().validate()
        self.rho0 = _number(self.rho0, "rho0", 0.0, 1e6, lo_open=True)
        _positive_int(self.iters, "iters")
        _positive_int(self.cg_iters, "cg_iters")
        self.percdamp = _number(self.percdamp, "percdamp", 0.0, 10.0)

    def solve(self, W: Tensor, stats: LayerStats, sparsity: float, pattern: Pattern, name: str,
              mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """ALPS on one weight (``solvers.alps``)."""
        return S.alps(W, stats, sparsity, pattern, rho0=self.rho0, iters=self.iters, cg_iters=self.cg_iters,
                      percdamp=self.percdamp, mask=mask, name=name)


@METHODS.register("alps", kind="calibrated", config=ALPS, stats=("gram",))
def prune_alps(model: nn.Module, config: ALPS, data: Any = None) -> Report:
    """ALPS on every transformer block of ``model`` (Meng et al. 2024)."""
    return prune_blocks(model, "alps", config, _need_data(data, "ALPS"))


__all__ = ["ALPS", "CalibratedMagnitude", "prune_alps", "prune_calibrated_magnitude", "prune_sparsegpt",
           "prune_wanda"]
