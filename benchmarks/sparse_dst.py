"""Sparse training at one sparsity on MNIST-1D with the 1-D CNN: dense, gradual magnitude, RigL, SET, GraNet,
static random ERK, SR-STE 2:4 / 1:4, RigL + distillation from the dense model; several seeds.

    nice -n 10 python benchmarks/sparse_dst.py --width 128 --sparsity 0.9 --seeds 0 1 2

Every run uses the zoo recipe (60 epochs of SGD); sparse methods update masks every 100 steps with
alpha = 0.3 until 75% of training (RigL's defaults). The audit columns are measured after EVERY optimizer
step: the largest change of any layer's kept count (0 = drop/grow kept it constant) and the number of
pruned weights found non-zero (must be 0). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
from sparse_common import data, machine, mean_std, train

METHODS = ("dense", "gradual", "rigl", "set", "granet", "static", "srste24", "srste14", "rigl_kd")


def run_method(name: str, seed: int, args: argparse.Namespace, split, teacher) -> dict:
    """One method at one seed."""
    if name.startswith("srste"):
        n = int(name[5])
        return train("srste", None, seed, width=args.width, split=split, n=n, m=4, exclude=["convs.0"],
                     epochs=args.epochs)
    if name == "rigl_kd":
        return train("rigl", args.sparsity, seed, width=args.width, split=split, teacher=teacher, epochs=args.epochs,
                     alpha=args.kd_alpha, temperature=args.kd_temperature)
    return train(name, None if name == "dense" else args.sparsity, seed, width=args.width, split=split,
                 epochs=args.epochs)


def _diverged(runs: list[dict]) -> str:
    """'0', or how many runs stopped on a non-finite loss and at which steps."""
    steps = [r["diverged_at"] for r in runs if r.get("diverged_at")]
    return f"{len(steps)} (steps {', '.join(map(str, steps))})" if steps else "0"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=128, help="channels of the 1-D CNN (zoo default 25)")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=None, help="default: the zoo recipe (60)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--kd-alpha", type=float, default=0.5, help="rigl_kd: weight of the distillation term")
    ap.add_argument("--kd-temperature", type=float, default=4.0, help="rigl_kd: distillation temperature")
    ap.add_argument("--json", default=None, help="also write every run as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    split = data()
    runs: dict[str, list[dict]] = {m: [] for m in args.methods}
    for seed in args.seeds:
        dense = run_method("dense", seed, args, split, None)
        if "dense" in runs:
            runs["dense"].append(dense)
        for name in args.methods:
            if name != "dense":
                runs[name].append(run_method(name, seed, args, split, dense["model"]))
            print(f"seed {seed} {name}: {runs[name][-1]['accuracy']:.4f}", file=sys.stderr, flush=True)
    base = [r["accuracy"] for r in runs.get("dense", [])]
    print(f"\nmachine: {machine()}\n")
    print(f"cnn1d(channels={args.width}), MNIST-1D 4000/1000, sparsity {args.sparsity}, seeds {args.seeds}; "
          f"rigl_kd: teacher = the dense run of the same seed, alpha {args.kd_alpha}, T {args.kd_temperature}\n")
    print("| method | sparsity (measured) | test accuracy % (mean ± std) | vs dense (points) | max change of a "
          "layer's kept count | pruned weights non-zero | N:M violations | diverged (non-finite loss) | s / run |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, rs in runs.items():
        acc = [r["accuracy"] for r in rs]
        delta = f"{(statistics.mean(acc) - statistics.mean(base)) * 100:+.1f}" if base else ""
        sp = statistics.mean(r["sparsity"] for r in rs)
        change = max(r["max_count_change"] for r in rs)
        if name in ("gradual", "granet"):
            change = "n/a (grows sparsity)"
        elif name == "dense" or name.startswith("srste"):
            change = "n/a"
        print(f"| {name} | {sp:.4f} | {mean_std(acc)} | {delta} | {change} | "
              f"{sum(r['nonzero_pruned'] for r in rs)} | {sum(r['nm_violations'] for r in rs)} | "
              f"{_diverged(rs)} | {statistics.mean(r['seconds'] for r in rs):.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({m: [{k: v for k, v in r.items() if k != "model"} for r in rs] for m, rs in runs.items()}, f,
                      indent=1)


if __name__ == "__main__":
    main()
