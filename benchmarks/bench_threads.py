"""Why sweeps of small models set ``"threads": 1``: cnn1d training time with 1 vs 2 torch threads, side by side.

    nice -n 10 .venv/bin/python benchmarks/bench_threads.py --epochs 5 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from prunekit.training import fit
from prunekit.zoo import RECIPES, get_dataset, get_model


def train_seconds(threads: int, epochs: int, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Seconds to train a fresh cnn1d for ``epochs`` with ``threads`` intra-op threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = get_model("cnn1d", seed=0)
        t0 = time.perf_counter()
        fit(model, data, seed=0, **{**RECIPES["cnn1d"], "epochs": epochs})
        return time.perf_counter() - t0
    finally:
        torch.set_num_threads(old)


def main() -> None:
    """Alternate 1- and 2-thread runs; print the median of each and their ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    data = get_dataset("mnist1d").train
    times: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for n in (1, 2):
            times[n].append(train_seconds(n, args.epochs, data))
    med = {n: statistics.median(v) for n, v in times.items()}
    print("| torch threads | median s | runs (s) |\n|---:|---:|---|")
    for n, v in times.items():
        print(f"| {n} | {med[n]:.2f} | {', '.join(f'{t:.2f}' for t in v)} |")
    print(f"\n2 threads / 1 thread: {med[2] / med[1]:.2f}x the time")


if __name__ == "__main__":
    main()
