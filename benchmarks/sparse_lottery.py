"""Lottery tickets on MNIST-1D with the 1-D CNN: IMP with rewinding vs random re-initialization of the same masks.

    nice -n 10 python benchmarks/sparse_lottery.py --width 25 --rounds 12 --seeds 0 1 2

Each seed: train dense (zoo recipe, 60 epochs), then ``rounds`` levels of global magnitude pruning of 20%
of the remaining weights, rewinding the survivors to their initial values (step 0, Frankle & Carbin 2019)
and training again with the same recipe, a new optimizer each level. At every level at or above
``--control-from`` sparsity, the same masks are also trained from a fresh random initialization
(another seed): the control. Prints a Markdown table of test accuracy per level.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
from sparse_common import data, machine, mean_std, recipe

from prunekit.training import evaluate, iterative_magnitude, random_reinit_control
from prunekit.zoo import get_model


def one_seed(seed: int, args: argparse.Namespace, split) -> dict[int, dict]:
    """Ticket and control test accuracies per level for one seed."""
    model = get_model("cnn1d", seed=seed, channels=args.width)
    rec = recipe(**({"epochs": args.epochs} if args.epochs else {}))
    res = iterative_magnitude(model, split.train, rounds=args.rounds, fraction=args.fraction,
                              rewind_step=args.rewind_step, optimizer_state="reset", scope="global", seed=seed,
                              val_data=split.test, eval_every_epoch=False, **rec)
    out = {lv.level: {"sparsity": lv.sparsity, "ticket": lv.metrics["val_accuracy"]} for lv in res.levels}
    for lv in res.levels[1:]:
        if lv.sparsity + 1e-9 < args.control_from:
            continue
        ctrl = get_model("cnn1d", seed=seed, channels=args.width)
        random_reinit_control(ctrl, res.masks(lv.level), split.train, seed=10_000 + seed, **rec)
        out[lv.level]["control"] = evaluate(ctrl, split.test)["accuracy"]
        print(f"seed {seed} level {lv.level} ticket {out[lv.level]['ticket']:.4f} control "
              f"{out[lv.level]['control']:.4f}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=25, help="channels of the 1-D CNN (zoo default 25)")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--fraction", type=float, default=0.2)
    ap.add_argument("--rewind-step", type=int, default=0)
    ap.add_argument("--control-from", type=float, default=0.5, help="train the reinit control from this sparsity")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=None, help="default: the zoo recipe (60)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    split = data()
    per_seed = [one_seed(s, args, split) for s in args.seeds]
    print(f"\nmachine: {machine()}\n")
    print(f"cnn1d(channels={args.width}), MNIST-1D 4000/1000, IMP {args.fraction:.0%} per level, global magnitude, "
          f"rewind to step {args.rewind_step}, seeds {args.seeds}\n")
    print("| level | sparsity | rewound ticket, test acc % | random reinit, same masks | ticket - reinit (points) |")
    print("|---:|---:|---:|---:|---:|")
    for lv in sorted(per_seed[0]):
        tick = [s[lv]["ticket"] for s in per_seed]
        ctrl = [s[lv]["control"] for s in per_seed if "control" in s[lv]]
        diff = f"{(statistics.mean(tick) - statistics.mean(ctrl)) * 100:+.1f}" if ctrl else ""
        print(f"| {lv} | {per_seed[0][lv]['sparsity']:.3f} | {mean_std(tick)} | "
              f"{mean_std(ctrl) if ctrl else ''} | {diff} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(per_seed, f, indent=1)


if __name__ == "__main__":
    main()
