"""Delta pruning (DARE, DAREx-q, magnitude) and merging (task arithmetic, DARE + TA, TIES) on cnn1d / MNIST-1D.

    nice -n 10 python benchmarks/delta_merge.py --out docs/results/delta_merge.json

Base: cnn1d trained on all ten classes of 1000 MNIST-1D training signals (the "pre-training").
Task A: fine-tune the base on the classes 0-4 of the other 3000 training signals; task B: classes 5-9
(10% of each task's signals held out as its validation set, used only to tune DAREx-q's q). Every
model is scored on the test signals of each task (10-way top-1 accuracy). Fine-tuning: SGD, lr 0.02,
momentum 0.9, 8 epochs, batch 64, seed 0.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from torch.nn import functional as F

from prunekit import delta as D
from prunekit.training import evaluate, fit
from prunekit.zoo import get_dataset, get_model

RATES = (0.9, 0.99)


def task(x: torch.Tensor, y: torch.Tensor, classes: range) -> tuple[torch.Tensor, torch.Tensor]:
    keep = torch.isin(y, torch.tensor(list(classes)))
    return x[keep], y[keep]


def acc(model: torch.nn.Module, state: dict[str, torch.Tensor], data: tuple) -> float:
    model.load_state_dict(state)
    return 100 * evaluate(model, data)["accuracy"]


def val_loss(model: torch.nn.Module, state: dict[str, torch.Tensor], data: tuple) -> float:
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        return float(F.cross_entropy(model(data[0]), data[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/results/delta_merge.json")
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    data = get_dataset("mnist1d")
    xs, ys = data.x_train, data.y_train
    model = get_model("cnn1d", seed=0)
    fit(model, (xs[:1000], ys[:1000]), epochs=30, lr=0.05, batch_size=64, seed=0)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tasks, tuned, vals = {}, {}, {}
    for name, classes in (("A", range(0, 5)), ("B", range(5, 10))):
        x, y = task(xs[1000:], ys[1000:], classes)
        n_val = len(y) // 10
        vals[name] = (x[:n_val], y[:n_val])
        tasks[name] = task(data.x_test, data.y_test, classes)
        model.load_state_dict(base)
        fit(model, (x[n_val:], y[n_val:]), epochs=args.epochs, lr=0.02, batch_size=64, seed=0)
        tuned[name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rows: list[dict[str, Any]] = []

    def score(label: str, state: dict[str, torch.Tensor], **extra: Any) -> None:
        rows.append({"model": label, "acc_A": acc(model, state, tasks["A"]), "acc_B": acc(model, state, tasks["B"]),
                     **extra})

    score("base", base)
    taus = {}
    for name in ("A", "B"):
        score(f"tuned {name}", tuned[name])
        tau = taus[name] = D.task_vector(base, tuned[name])
        for rate in RATES:
            score(f"{name} DARE p={rate}", D.apply_delta(base, D.dare(tau, rate, seed=0)), task=name)
            masks = D.drop_masks(tau, rate, seed=0)
            q, table = D.tune_q(lambda q, m=masks: val_loss(model, D.apply_delta(
                base, {k: v * m[k] / q for k, v in tau.items()}), vals[name]), rate)  # noqa: B023
            score(f"{name} DAREx-q p={rate} (q={q:.3g})", D.apply_delta(base, D.darex(tau, rate, q, seed=0)),
                  task=name, q=q)
            score(f"{name} magnitude p={rate}", D.apply_delta(base, D.magnitude(tau, rate)), task=name)
    pair = [taus["A"], taus["B"]]
    for lam in (1.0, 0.5):
        score(f"task arithmetic lam={lam}", D.apply_delta(base, D.merge_deltas(pair, lam=lam)))
        score(f"DARE p=0.9 + task arithmetic lam={lam}", D.apply_delta(base, D.merge_deltas(pair, lam=lam,
                                                                                            rate=0.9)))
        score(f"TIES density=0.2 lam={lam}", D.apply_delta(base, D.merge_deltas(pair, "ties", lam=lam)))
    for r in rows:
        r["mean"] = (r["acc_A"] + r["acc_B"]) / 2
    res = {"rows": rows, "seconds": time.perf_counter() - t0, "epochs": args.epochs,
           "delta_entries": sum(v.numel() for v in taus["A"].values()),
           "command": f"nice -n 10 python benchmarks/delta_merge.py --out {args.out}"}
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print("| model | task A acc | task B acc | mean |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['acc_A']:.1f} | {r['acc_B']:.1f} | {r['mean']:.1f} |")
    print(f"{res['seconds']:.0f} s")


if __name__ == "__main__":
    main()
