"""Lottery Jackpots on the trained zoo cnn1d (64 channels, MNIST-1D): mask search vs magnitude + fine-tuning.

    nice -n 10 python benchmarks/jackpot.py --sparsities 0.5 0.8 0.9 --seeds 0 1 2 --dense-epochs 20

One dense cnn1d(channels=64) is trained with the zoo recipe (``--dense-epochs``, seed 0). Then, per
sparsity and seed: (a) ``jackpot``: 5 epochs of mask search over the frozen trained weights (scores
initialised from |W|, short restriction 0.1, per-layer uniform sparsity, Adam lr 0.005, cosine), no weight
update; (b) magnitude pruning with the same per-layer sparsities, then 5 epochs of fine-tuning (SGD lr 0.01,
momentum 0.9, cosine). The seed sets the batch order. Prints a Markdown table and one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from prunekit.masks import attach
from prunekit.training import evaluate, fit
from prunekit.training.pai import magnitude_masks
from prunekit.training.supermask import Supermask
from prunekit.zoo import RECIPES, get_dataset, get_model


def dense(epochs: int, data) -> dict[str, torch.Tensor]:
    net = get_model("cnn1d", seed=0, channels=64)
    fit(net, data.train, **{**RECIPES["cnn1d"], "epochs": epochs}, seed=0)
    return {"state": net.state_dict(), "accuracy": evaluate(net, data.test)["accuracy"]}


def fresh(state: dict) -> torch.nn.Module:
    net = get_model("cnn1d", seed=0, channels=64)
    net.load_state_dict(state)
    return net


def jackpot(state: dict, sparsity: float, seed: int, data, epochs: int) -> float:
    net = fresh(state)
    fit(net, data.train, epochs=epochs, batch_size=128, lr=0.005, optimizer="adam", weight_decay=0.0,
        callbacks=[Supermask("jackpot", sparsity, restriction=0.1)], seed=seed)
    return evaluate(net, data.test)["accuracy"]


def magnitude_finetune(state: dict, sparsity: float, seed: int, data, epochs: int) -> tuple[float, float]:
    net = fresh(state)
    attach(net, magnitude_masks(net, sparsity, scope="layer", allocation="uniform"))
    before = evaluate(net, data.test)["accuracy"]
    fit(net, data.train, epochs=epochs, batch_size=128, lr=0.01, optimizer="sgd", momentum=0.9, weight_decay=5e-4,
        seed=seed)
    return before, evaluate(net, data.test)["accuracy"]


def _ms(xs: list[float]) -> str:
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return f"{100 * m:.2f} ± {100 * sd:.2f} (n={len(xs)})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.8, 0.9])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--dense-epochs", type=int, default=20)
    p.add_argument("--epochs", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    data = get_dataset("mnist1d")
    t0 = time.perf_counter()
    d = dense(args.dense_epochs, data)
    print(json.dumps({"dense_accuracy": d["accuracy"], "dense_epochs": args.dense_epochs,
                      "s": time.perf_counter() - t0}), flush=True)
    rows = []
    for s in args.sparsities:
        jp, mag0, mag = [], [], []
        for seed in args.seeds:
            t = time.perf_counter()
            jp.append(jackpot(d["state"], s, seed, data, args.epochs))
            b, a = magnitude_finetune(d["state"], s, seed, data, args.epochs)
            mag0.append(b)
            mag.append(a)
            print(json.dumps({"sparsity": s, "seed": seed, "jackpot": jp[-1], "magnitude": b, "magnitude_ft": a,
                              "s": time.perf_counter() - t}), flush=True)
        rows.append(f"| {s:g} | {_ms(jp)} | {_ms(mag0)} | {_ms(mag)} |")
    print(f"\ndense cnn1d(channels=64), {args.dense_epochs} epochs: {100 * d['accuracy']:.2f}%\n")
    print(f"| sparsity | jackpot, {args.epochs} search epochs | magnitude, no fine-tuning | magnitude + "
          f"{args.epochs} fine-tuning epochs |\n|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
