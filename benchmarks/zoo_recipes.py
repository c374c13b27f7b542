"""Zoo benchmark: test accuracy of each model's default recipe (``prunekit.zoo.RECIPES``) over seeds.

Prints Markdown tables for docs/results/zoo.md. Usage:
    python benchmarks/zoo_recipes.py [--seeds 0 1 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from prunekit.training import evaluate, fit
from prunekit.zoo import MODELS, RECIPE_DATASETS, RECIPES, get_dataset, get_model, input_shape


def run_recipe(name: str, seed: int) -> tuple[float, float, float]:
    """(test accuracy, final train accuracy, wall seconds of ``fit``) for one seed."""
    data = get_dataset(RECIPE_DATASETS[name])
    model = get_model(name, seed=seed)
    t0 = time.perf_counter()
    result = fit(model, data.train, seed=seed, **RECIPES[name])
    seconds = time.perf_counter() - t0
    return evaluate(model, data.test)["accuracy"], result.final["train_accuracy"], seconds


def recipe_table(seeds: list[int]) -> str:
    """Markdown table: model, data, recipe, test accuracy per seed, mean, time per run."""
    lines = ["| model | data (train/test) | recipe | test acc. per seed | mean | train acc. | s / run |",
             "|---|---|---|---|---|---|---|"]
    for name in RECIPES:
        d = get_dataset(RECIPE_DATASETS[name])
        runs = [run_recipe(name, s) for s in seeds]
        accs = [100 * r[0] for r in runs]
        recipe = ", ".join(f"{k}={v}" for k, v in RECIPES[name].items())
        lines.append(f"| {name} | {RECIPE_DATASETS[name]} ({len(d.y_train)}/{len(d.y_test)}) | {recipe} | "
                     f"{' / '.join(f'{a:.1f}' for a in accs)} | {statistics.mean(accs):.1f} | "
                     f"{statistics.mean(100 * r[1] for r in runs):.1f} | "
                     f"{statistics.mean(r[2] for r in runs):.1f} |")
    return "\n".join(lines)


def model_table() -> str:
    """Markdown table: every registered model's parameter count and input shape at its defaults."""
    lines = ["| model | params | input (per example) |", "|---|---|---|"]
    for name in MODELS.names():
        n = sum(p.numel() for p in get_model(name, seed=0).parameters())
        lines.append(f"| {name} | {n:,} | {input_shape(name)} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(model_table())
    print()
    print(recipe_table(a.seeds))


if __name__ == "__main__":
    main()
