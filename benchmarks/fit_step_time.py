"""Step time of ``prunekit.training.fit`` on MNIST-1D / cnn1d: batched tensor fetch vs per-example collation.

    .venv/bin/python benchmarks/fit_step_time.py --epochs 5
"""

from __future__ import annotations

import argparse
import time

import torch

from prunekit.training import fit
from prunekit.zoo import get_dataset, get_model


class PerExample(torch.utils.data.Dataset):
    """The same tensors behind a plain Dataset, so the loader collates example by example."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    d = get_dataset("mnist1d")
    times = {}
    for _ in range(2):  # interleaved twice
        for name, data in [("batched", d.train), ("per-example", PerExample(*d.train))]:
            t = time.perf_counter()
            res = fit(get_model("cnn1d", seed=0), data, epochs=args.epochs)
            times.setdefault(name, []).append((time.perf_counter() - t) / res.state.step * 1000)
    for name, ts in times.items():
        print(f"{name}: {min(ts):.2f} ms/step (best of {len(ts)})")
    print(f"ratio per-example / batched: {min(times['per-example']) / min(times['batched']):.2f}")


if __name__ == "__main__":
    main()
