"""Noisy-label detection: AUROC of data scores for 20% symmetric label noise, and training after the cut.

    nice -n 10 .venv/bin/python benchmarks/data_noise.py --dataset mnist1d --rate 0.2 --out /tmp/datap_bench

A ``rate`` fraction of training labels is flipped to a uniformly chosen other class (seed 0). Three
proxy runs (seeds 100-102) train on the noisy labels with ``DynamicsRecorder`` (as many steps as
one benchmark run); each score's AUROC for "this label is wrong" is reported (higher score = flagged),
EL2N at the pruning benchmark's early epoch (``learned_epoch``: the first epoch at which the proxies'
mean training accuracy reaches 0.9 of its final value; printed), at the earlier fixed 10% of the run
for comparison, and, as a diagnostic, at every epoch.
Then 3 seeds train for the same steps on: all noisy data; the 80% with the lowest -AUM (highest AUM);
a random 80%; and the clean-label data for reference.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from data_common import SETUPS, auroc, load, machine, proxy_epochs, symmetric_noise, train_eval

from prunekit.data import aum, el2n, entropy, forgetting, learned_epoch, loss, record_runs, select, training_accuracy
from prunekit.data.report import plot_score_histograms
from prunekit.zoo import get_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=sorted(SETUPS), default="mnist1d")
    ap.add_argument("--rate", type=float, default=0.2)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--proxy-seeds", nargs="+", type=int, default=[100, 101, 102])
    ap.add_argument("--out", type=Path, default=Path("/tmp/datap_bench"))
    ap.add_argument("--no-train", action="store_true", help="only the AUROC table")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("prunekit").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    name, data = args.dataset, load(args.dataset)
    y_noisy, flipped = symmetric_noise(data.y_train, args.rate, data.num_classes, seed=0)
    setup = SETUPS[name]
    e = proxy_epochs(name, len(y_noisy))
    t = time.perf_counter()
    root = args.out / f"{name}-noise{args.rate}-dynamics"
    runs = record_runs(lambda s: get_model(setup["model"], seed=s), (data.x_train, y_noisy), root,
                       seeds=args.proxy_seeds, epochs=e, **setup["fit"])
    cost = root / "proxy_cost.json"  # the proxies' training time, kept for reruns that reuse them
    if not cost.exists():
        cost.write_text(json.dumps({"proxy_s": time.perf_counter() - t}))
    proxy_s = json.loads(cost.read_text())["proxy_s"]
    el2n_epoch, fixed_epoch = learned_epoch(runs), max(1, e // 10)
    acc = training_accuracy(runs)
    print(f"{name} noisy: EL2N epoch (auto) = {el2n_epoch} of {e}; proxies' mean training accuracy there "
          f"{acc[el2n_epoch]:.3f}, final {acc[-1]:.3f}", flush=True)
    scores = {f"el2n (auto: epoch {el2n_epoch})": el2n(runs, epoch="auto"),
              f"el2n (fixed 10%: epoch {fixed_epoch})": el2n(runs, epoch=fixed_epoch), "-aum": aum(runs),
              "forgetting": forgetting(runs), "loss (mean)": loss(runs), "entropy (last)": entropy(runs)}
    flag = flipped.numpy()
    rows = [f"| {k} | {auroc(v.numpy(), flag):.3f} |" for k, v in scores.items()]
    by_epoch = [auroc(el2n(runs, epoch=t).numpy(), flag) for t in range(e)]
    md = [f"Noisy-label AUROC, {name} ({len(flag)} train, {int(flag.sum())} flipped = {args.rate:.0%} symmetric), "
          f"{len(runs)} proxy runs x {e} epochs ({proxy_s:.0f} s):", "", "| score | AUROC |", "|---|---|", *rows,
          "", "EL2N AUROC by proxy epoch (0-based): " + ", ".join(f"{t}: {a:.3f}" for t, a in enumerate(by_epoch)),
          "", "Proxies' mean training accuracy by epoch: " + ", ".join(f"{t}: {a:.3f}" for t, a in enumerate(acc))]
    plot_score_histograms({k: v for k, v in scores.items() if k != "entropy (last)" and "fixed" not in k},
                          args.out / f"{name}-noise-scores.png", flagged=flag, title=f"{name}, {args.rate:.0%} noise")
    if not args.no_train:
        md += ["", *train_after_cut(name, data, y_noisy, scores["-aum"], args.seeds)]
    md += ["", f"Machine: {json.dumps(machine())}; wall time {time.perf_counter() - t0:.0f} s."]
    (args.out / f"{name}-noise.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def train_after_cut(name: str, data, y_noisy: torch.Tensor, neg_aum: torch.Tensor, seeds: list[int]) -> list[str]:
    """Test accuracy (mean, std over seeds) of training on all / AUM-cleaned / random 80% of the noisy data."""
    n = len(y_noisy)
    variants = {"clean labels (reference)": (None, data.y_train), "all noisy": (None, y_noisy),
                "keep 0.8 lowest -AUM": (select(neg_aum, 0.8, "keep-easy"), y_noisy)}
    out = ["| training data | test acc. (%) |", "|---|---|"]
    for label, (idx, y) in variants.items():
        accs = [train_eval(name, data, s, idx=idx, y_train=y)[0] * 100 for s in seeds]
        out.append(f"| {label} | {np.mean(accs):.1f} ({np.std(accs):.1f}) |")
    accs = [train_eval(name, data, s, idx=select(torch.zeros(n), 0.8, "random", seed=s), y_train=y_noisy)[0] * 100
            for s in seeds]
    out.append(f"| random 0.8 of noisy | {np.mean(accs):.1f} ({np.std(accs):.1f}) |")
    return out


if __name__ == "__main__":
    main()
