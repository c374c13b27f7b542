"""README recipes on the zoo's cnn1d / MNIST-1D, measured with the library: prune + fine-tune, and RigL.

Prints one JSON line per run and a Markdown table per part for docs/results/zoo.md. Usage:
    python benchmarks/readme_recipes.py prune --seeds 0 1 2 --runs 0.75:20:0.1 0.8:20:0.1
    python benchmarks/readme_recipes.py rigl --seeds 0 1 2 --runs 0.8:64:120 0.7:64:60

``prune`` runs are SPARSITY:EPOCHS:LR (one-shot global magnitude on the dense recipe's model, then
fine-tuning with the recipe at that many epochs and learning rate); ``rigl`` runs are
SPARSITY:CHANNELS:EPOCHS (RigL from scratch with ``training_callbacks("rigl", sparsity)``, the CLI's
defaults, on ``cnn1d(channels=CHANNELS)``). Dense is the zoo recipe on the default 25-channel cnn1d.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import prunekit as pk
from prunekit.training import evaluate, fit, training_callbacks
from prunekit.zoo import RECIPES, get_dataset, get_model


def dense(seed: int, data) -> tuple[torch.nn.Module, float]:
    """The zoo recipe's dense cnn1d and its test accuracy."""
    model = get_model("cnn1d", seed=seed)
    fit(model, data.train, seed=seed, **RECIPES["cnn1d"])
    return model, evaluate(model, data.test)["accuracy"]


def prune_finetune(trained: torch.nn.Module, seed: int, data, sparsity: float, epochs: int, lr: float) -> dict:
    """One-shot global magnitude on a copy of the dense model, then fine-tuning; accuracies before and after."""
    model = get_model("cnn1d", seed=seed)
    model.load_state_dict(trained.state_dict())
    pk.prune_(model, pk.Magnitude(sparsity, scope="global"))
    pruned = evaluate(model, data.test)["accuracy"]
    fit(model, data.train, seed=seed, **{**RECIPES["cnn1d"], "epochs": epochs, "lr": lr})
    return {"pruned": pruned, "accuracy": evaluate(model, data.test)["accuracy"]}


def rigl(seed: int, data, sparsity: float, channels: int, epochs: int) -> dict:
    """RigL from scratch at ``sparsity`` on ``cnn1d(channels=channels)``."""
    model = get_model("cnn1d", seed=seed, channels=channels)
    fit(model, data.train, callbacks=training_callbacks("rigl", sparsity, seed=seed), seed=seed,
        **{**RECIPES["cnn1d"], "epochs": epochs})
    return {"accuracy": evaluate(model, data.test)["accuracy"]}


def _parse(run: str, kinds: tuple[type, ...]) -> tuple:
    parts = run.split(":")
    if len(parts) != len(kinds):
        raise SystemExit(f"run {run!r}: expected {len(kinds)} values separated by ':'")
    return tuple(k(v) for k, v in zip(kinds, parts))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["prune", "rigl"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    data = get_dataset("mnist1d")
    kinds = (float, int, float) if a.part == "prune" else (float, int, int)
    runs = [_parse(r, kinds) for r in a.runs]
    dense_acc: dict[int, float] = {}
    acc: dict[tuple, list[float]] = {r: [] for r in runs}
    for seed in a.seeds:
        model, dense_acc[seed] = dense(seed, data)
        print(json.dumps({"seed": seed, "dense": dense_acc[seed]}), flush=True)
        for r in runs:
            t0 = time.perf_counter()
            out = prune_finetune(model, seed, data, *r) if a.part == "prune" else rigl(seed, data, *r)
            acc[r].append(out["accuracy"])
            print(json.dumps({"seed": seed, "run": r, **out, "s": time.perf_counter() - t0}), flush=True)
    d = [100 * dense_acc[s] for s in a.seeds]
    head = "sparsity | fine-tune epochs | lr" if a.part == "prune" else "sparsity | channels | epochs"
    print(f"\n| {head} | test acc. per seed | mean | dense per seed | mean gap (points) |")
    print("|---|---|---|---|---|---|---|")
    for r, v in acc.items():
        v = [100 * x for x in v]
        gap = statistics.mean(x - y for x, y in zip(v, d))
        print(f"| {' | '.join(map(str, r))} | {' / '.join(f'{x:.1f}' for x in v)} | {statistics.mean(v):.1f} | "
              f"{' / '.join(f'{x:.1f}' for x in d)} | {gap:+.1f} |")


if __name__ == "__main__":
    main()
