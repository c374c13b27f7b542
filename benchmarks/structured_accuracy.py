"""Accuracy after the same fine-tuning: prunekit vs torch-pruning 1.6.1 at 50% MACs, 3 seeds.

    nice -n 10 .bench-env/bin/python benchmarks/structured_accuracy.py --model cnn1d \
        --out docs/results/structured_accuracy_cnn1d.json

    nice -n 10 .bench-env/bin/python benchmarks/structured_accuracy.py --model resnet20 \
        --out docs/results/structured_accuracy_resnet20.json

Per seed: train the dense zoo model with its recipe on its data set (cnn1d: MNIST-1D, lenet5: digits,
resnet20: digits as 1x8x8 images with the lenet5 recipe), remove to 50% of the MACs with each tool
(group L2 magnitude; torch-pruning's channel ratio bisected to the same MACs), then fine-tune all the
same way (``fit``, SGD, lr 0.01, cosine, ``--ft-epochs``). Models with stacks of residual blocks also get
prunekit's depth-first removal (``remove_blocks="auto", allocation="global"``), the fastest on CPUs.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path
from typing import Any

import torch
from structured_common import machine, tp_to_macs

from prunekit.accounting import count_macs
from prunekit.structured import Structured, remove_
from prunekit.training import evaluate, fit
from prunekit.zoo import RECIPE_DATASETS, RECIPES, example_inputs, get_dataset, get_model

# models without a zoo recipe: (model kwargs, data set, recipe, example input shape)
EXTRA = {"resnet20": ({"in_channels": 1}, "digits", RECIPES["lenet5"], (2, 1, 8, 8))}


def setup(name: str) -> tuple[dict, str, dict, Any]:
    if name in EXTRA:
        kw, ds, recipe, shape = EXTRA[name]
        return kw, ds, recipe, torch.randn(shape)
    return {}, RECIPE_DATASETS[name], RECIPES[name], example_inputs(name, batch=2)


def one_seed(name: str, seed: int, ft_epochs: int, target: float) -> dict:
    kw, ds, recipe, x = setup(name)
    data = get_dataset(ds)
    dense = get_model(name, seed=seed, **kw)
    fit(dense, data.train, seed=seed, **recipe)
    row = {"seed": seed, "dense": evaluate(dense, data.test)["accuracy"]}
    base = count_macs(dense, x)
    ours = copy.deepcopy(dense)
    remove_(ours, x, Structured(target_macs=target, importance="l2"))
    theirs, _ = tp_to_macs(copy.deepcopy(dense), x, target)
    variants = [("prunekit", ours), ("torch-pruning", theirs)]
    if name in EXTRA:
        deep = copy.deepcopy(dense)
        remove_(deep, x, Structured(target_macs=target, importance="l2", remove_blocks="auto", allocation="global"))
        variants.append(("prunekit_depth_first", deep))
    for label, m in variants:
        row[f"{label}_macs_ratio"] = count_macs(m, x) / base
        row[f"{label}_removed"] = evaluate(m, data.test)["accuracy"]
        fit(m, data.train, epochs=ft_epochs, lr=0.01, seed=seed, batch_size=recipe["batch_size"])
        row[f"{label}_finetuned"] = evaluate(m, data.test)["accuracy"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cnn1d", choices=sorted({*RECIPES, *EXTRA}))
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--ft-epochs", type=int, default=10)
    ap.add_argument("--target-macs", type=float, default=0.5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    for s in args.seeds:
        rows.append(one_seed(args.model, s, args.ft_epochs, args.target_macs))
        print(json.dumps(rows[-1]), flush=True)
    summary = {k: (statistics.mean(r[k] for r in rows), statistics.stdev(r[k] for r in rows) if len(rows) > 1 else 0.0)
               for k in rows[0] if k != "seed"}
    out = args.out or Path(f"docs/results/structured_accuracy_{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "model": args.model, "dataset": setup(args.model)[1],
                               "ft_epochs": args.ft_epochs, "rows": rows, "summary": summary}, indent=1))
    print("| metric | mean | std |\n|---|---|---|")
    for k, (m, s) in summary.items():
        print(f"| {k} | {m:.4f} | {s:.4f} |")


if __name__ == "__main__":
    main()
