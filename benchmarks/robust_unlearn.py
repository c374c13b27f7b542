"""Unlearning grid of docs/results/robustness.md: 3 seeds x forget {class:3, random:0.1} x unlearners
{retrain, finetune, grad-ascent, l1-sparse} x sparsity {0 (dense), 0.5, 0.9}, on digits / lenet5 by default.

The original model is trained once per seed and forget set; the dense retrain is the reference of every gap.
Writes the raw rows to ``--json`` and prints the Markdown table.

    nice -n 10 python benchmarks/robust_unlearn.py --json docs/results/robustness_unlearn.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from prunekit.io import atomic_write_text
from prunekit.robust.unlearn import UNLEARNERS, UnlearnConfig, gap, prepare, unlearn

SPARSITIES = (0.0, 0.5, 0.9)


def grid(args: argparse.Namespace) -> list[dict]:
    rows = []
    for forget in ("class:3", "random:0.1"):
        for seed in range(args.seeds):
            cfg = UnlearnConfig(dataset=args.dataset, forget=forget, seed=seed, epochs=args.epochs)
            prep = prepare(cfg)
            ref = unlearn(prep, "retrain", 0.0, cfg)[1]
            for s in SPARSITIES:
                for method in UNLEARNERS.names():
                    m = ref if (method == "retrain" and s == 0) else \
                        unlearn(prep, method, s, dataclasses.replace(cfg, method=method, sparsity=s))[1]
                    rows.append({"forget": forget, "seed": seed, "method": method, "target_sparsity": s, **m,
                                 "gap_to_retrain": gap(m, ref), "model": prep.model_name})
            print(f"{forget} seed {seed} done", flush=True)
    return rows


def _ms(vals: list[float], scale: float = 100.0) -> str:
    return f"{scale * statistics.mean(vals):.1f} ± {scale * statistics.pstdev(vals):.1f}"


def table(rows: list[dict]) -> str:
    out = ["| forget | unlearner | sparsity | forget acc % | retain acc % | test acc % | MIA efficacy % | "
           "gap to retrain (pts) | seconds |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for forget in ("class:3", "random:0.1"):
        for method in ("retrain", "finetune", "grad-ascent", "l1-sparse"):
            for s in SPARSITIES:
                rs = [r for r in rows if (r["forget"], r["method"], r["target_sparsity"]) == (forget, method, s)]
                out.append(f"| {forget} | {method} | {s:.0%} | {_ms([r['forget_acc'] for r in rs])} | "
                           f"{_ms([r['retain_acc'] for r in rs])} | {_ms([r['test_acc'] for r in rs])} | "
                           f"{_ms([r['mia_efficacy'] for r in rs])} | {_ms([r['gap_to_retrain'] for r in rs])} | "
                           f"{_ms([r['seconds'] for r in rs], 1.0)} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=20, help="training epochs of the original model")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    rows = grid(args)
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(rows, indent=1))
    print(table(rows))
    print(f"\ntotal {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
