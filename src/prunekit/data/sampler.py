"""RS2: repeated sampling of random subsets, one fresh subset per epoch (Okanovic et al. 2024, Algorithm 1).

Pass the sampler to ``prunekit.training.fit(..., sampler=RS2Sampler(...))``; each epoch the loader
iterates a new subset of ``round(keep_fraction * N)`` examples in random order.

- ``replacement=False`` (the paper's default): walk through one random permutation in consecutive
  chunks, reshuffling when it runs out, so every example is seen once per ``1 / keep_fraction`` epochs.
- ``replacement=True``: each epoch draws an independent uniform subset (an example may come back
  in consecutive epochs; within one epoch there are no repeats).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler

from .checks import check_positive_int, keep_count, keep_fraction_arg


class RS2Sampler(Sampler[int]):
    """Per-epoch random subset of a data set of ``num_examples``; deterministic under ``seed``, resumable."""

    def __init__(self, num_examples: int, keep_fraction: float, replacement: bool = False, seed: int = 0) -> None:
        self.num_examples = check_positive_int(num_examples, "num_examples")
        self.keep_fraction = keep_fraction_arg(keep_fraction)
        if not isinstance(replacement, bool):
            raise ValueError(f"replacement must be True or False, got {replacement!r}")
        self.replacement = replacement
        self.seed = int(seed)
        self.k = keep_count(self.num_examples, self.keep_fraction)
        self.epoch = 0
        self._perm: torch.Tensor | None = None
        self._pos = 0
        self._gen = torch.Generator().manual_seed(self.seed)

    def __len__(self) -> int:
        return self.k

    def subset(self) -> torch.Tensor:
        """Next epoch's example indices ``(k,)`` in visiting order; advances the epoch."""
        if self.replacement:
            out = torch.randperm(self.num_examples, generator=self._gen)[: self.k]
        else:
            out = self._next_chunk()
        self.epoch += 1
        return out

    def _next_chunk(self) -> torch.Tensor:
        parts, need = [], self.k
        while need > 0:
            if self._perm is None or self._pos >= self.num_examples:
                self._perm, self._pos = torch.randperm(self.num_examples, generator=self._gen), 0
            take = self._perm[self._pos:self._pos + need]
            self._pos += len(take)
            need -= len(take)
            parts.append(take)
        chunk = torch.cat(parts)
        return chunk[torch.randperm(len(chunk), generator=self._gen)]  # visit order within the epoch

    def __iter__(self) -> Iterator[int]:
        return iter(self.subset().tolist())

    def schedule(self, epochs: int) -> torch.Tensor:
        """The next ``epochs`` subsets as ``(epochs, k)`` (advances the sampler like iterating it)."""
        e = check_positive_int(epochs, "epochs")
        return torch.stack([self.subset() for _ in range(e)])

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the same sequence of subsets."""
        return {"epoch": self.epoch, "pos": self._pos, "perm": None if self._perm is None else self._perm.clone(),
                "generator": self._gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state_dict()``."""
        self.epoch, self._pos, self._perm = int(state["epoch"]), int(state["pos"]), state["perm"]
        self._gen.set_state(state["generator"])
