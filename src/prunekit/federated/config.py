"""The settings of one federated run, checked before any data is split or any client starts."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import check_choice, check_fraction
from .methods import DEFAULT_VOTE_RATE, METHODS, PAI_CHOICES

DATASETS = ("mnist1d", "digits")
MODEL_KWARGS = {"mnist1d": {"in_features": 40}, "digits": {"in_features": 64}}


@dataclass
class FedConfig:
    """One simulation: data set, clients, Dirichlet alpha, rounds, method, sparsity, sampling and recipe."""

    dataset: str = "mnist1d"
    clients: int = 10
    alpha: float = 0.5
    rounds: int = 30
    method: str = "hidenseek"
    sparsity: float | None = None
    seed: int = 0
    fraction: float = 1.0  # clients sampled per round
    local_epochs: int = 1
    batch_size: int = 16
    lr: float | None = None
    pai: str = "synflow"
    prune_round: int | None = None
    vote_rate: float = DEFAULT_VOTE_RATE  # supermask servers: v_t = (1 - rate) v_(t-1) + rate * this round's mean vote
    model: str = "mlp"
    hidden: tuple[int, ...] = (256, 128)
    cpus: int = 2  # Ray's CPUs (one client per CPU at a time)

    def validate(self) -> FedConfig:
        """Raise a ``ValueError`` naming the flag and accepted values; return self."""
        check_choice(self.dataset, "--dataset", DATASETS)
        check_choice(self.method, "--method", METHODS)
        check_choice(self.pai, "--pai", PAI_CHOICES)
        check_choice(self.model, "--model", ("mlp",))
        for flag, v in (("--clients", self.clients), ("--rounds", self.rounds), ("--local-epochs", self.local_epochs),
                        ("--batch-size", self.batch_size), ("--cpus", self.cpus)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{flag} must be a positive integer, got {v!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise ValueError(f"--alpha (Dirichlet concentration) must be a number > 0, got {self.alpha!r}")
        check_fraction(self.fraction, "--fraction")
        if self.method == "fedavg":
            if self.sparsity not in (None, 0, 0.0):
                raise ValueError(f"--sparsity does not apply to --method fedavg (dense); got {self.sparsity}")
        else:
            s = self.sparsity
            if s is None or isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 < float(s) < 1.0:
                raise ValueError(f"--method {self.method} needs --sparsity in (0, 1), got {s!r}")
        if self.method == "hidenseek" and self.pai == "none":
            raise ValueError("--method hidenseek trains signs over a pruning-at-initialization mask: give --pai "
                             "synflow, magnitude or random (got none)")
        if self.prune_round is not None and not (isinstance(self.prune_round, int) and
                                                 1 <= self.prune_round <= self.rounds):
            raise ValueError(f"--prune-round must be an integer in [1, --rounds={self.rounds}], "
                             f"got {self.prune_round!r}")
        if isinstance(self.vote_rate, bool) or not isinstance(self.vote_rate, (int, float)) or \
                not 0.0 < float(self.vote_rate) <= 1.0:
            raise ValueError(f"--vote-rate must be a number in (0, 1] (1: no memory of earlier rounds' votes), "
                             f"got {self.vote_rate!r}")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"--lr must be a number > 0, got {self.lr!r}")
        return self

    @property
    def sampled(self) -> int:
        """Clients sampled per round: round(fraction * clients), at least one."""
        return max(1, round(self.fraction * self.clients))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        d["sparsity"] = float(self.sparsity or 0.0)
        return d
