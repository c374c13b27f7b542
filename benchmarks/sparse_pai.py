"""Pruning at initialization at 95-99% sparsity on MNIST-1D with the 1-D CNN: layer collapse and accuracy.

    nice -n 10 python benchmarks/sparse_pai.py --width 25 --sparsities 0.95 0.98 0.99 --seeds 0 1 2

Masks are computed at initialization by global magnitude, SNIP, GraSP (one ranking over all layers,
``max_layer_sparsity=1.0`` as in the papers: no per-layer floor), iterative SynFlow (100 rounds,
data-free) and random with ERK per-layer sparsities, then fixed while the network trains with the zoo
recipe. "collapsed" lists the layers with no weight left (seed 0) and "disconnected" counts the seeds
whose masked network has no path from input to output (SynFlow's R = 0 with |W| and biases at zero).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from sparse_common import data, machine, mean_std, recipe
from torch import nn

from prunekit.masks import attach
from prunekit.training import evaluate, fit
from prunekit.training.pai import prune_at_init_masks
from prunekit.zoo import get_model

METHODS = ("magnitude", "snip", "grasp", "synflow", "random")


def connected(model: nn.Module, masks: dict[str, torch.Tensor], input_shape: tuple[int, ...]) -> bool:
    """True if some input->output path survives: sum of outputs of the net with |W| * mask, biases 0, input 1."""
    state = {n: t.detach().double().abs() for n, t in [*model.named_parameters(), *model.named_buffers()]
             if t.is_floating_point()}
    state = {n: (t * masks[n] if n in masks else (torch.zeros_like(t) if n.endswith("bias") else t))
             for n, t in state.items()}
    x = torch.ones((1, *input_shape), dtype=torch.float64)
    with torch.no_grad():
        return bool(torch.func.functional_call(model, state, (x,)).sum() > 0)


def one(method: str, sparsity: float, seed: int, args: argparse.Namespace, split) -> dict:
    """Masks at init, then training with the masks fixed."""
    model = get_model("cnn1d", seed=seed, channels=args.width)
    kw = {} if method == "random" else {"max_layer_sparsity": 1.0}
    if method in ("snip", "grasp"):
        kw["batch_size"] = 128
    masks = prune_at_init_masks(model, method, sparsity, split.train, **({"seed": seed} if method == "random"
                                                                         else {}), **kw)
    dead = [k for k, m in masks.items() if not m.any()]
    path = connected(model, masks, (40,))
    attach(model, masks)
    fit(model, split.train, seed=seed, **recipe(**({"epochs": args.epochs} if args.epochs else {})))
    acc = evaluate(model, split.test)["accuracy"]
    print(f"{method} {sparsity} seed {seed}: {acc:.4f} collapsed={dead}", file=sys.stderr, flush=True)
    return {"accuracy": acc, "collapsed": dead, "connected": path,
            "kept": {k: int(m.sum()) for k, m in masks.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=25)
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.95, 0.98, 0.99])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    split = data()
    rows = {(m, s): [one(m, s, seed, args, split) for seed in args.seeds] for s in args.sparsities
            for m in args.methods}
    print(f"\nmachine: {machine()}\n")
    print(f"cnn1d(channels={args.width}), MNIST-1D 4000/1000, masks fixed at init, seeds {args.seeds}\n")
    print("| sparsity | method | kept per layer (seed 0: convs.0, convs.1, convs.2, linear) | collapsed layers "
          "(seed 0) | seeds disconnected | test accuracy % (mean ± std) |")
    print("|---:|---|---|---|---:|---:|")
    for (m, s), rs in rows.items():
        kept = ", ".join(str(v) for v in rs[0]["kept"].values())
        dead = ", ".join(rs[0]["collapsed"]) or "none"
        disc = sum(not r["connected"] for r in rs)
        print(f"| {s} | {m} | {kept} | {dead} | {disc}/{len(rs)} | {mean_std([r['accuracy'] for r in rs])} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{m}@{s}": rs for (m, s), rs in rows.items()}, f, indent=1)


if __name__ == "__main__":
    main()
