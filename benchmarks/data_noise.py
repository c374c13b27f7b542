"""Noisy-label detection: AUROC of data scores for symmetric label noise, training after the cut, and a grid.

    nice -n 10 .venv/bin/python benchmarks/data_noise.py --dataset mnist1d --rate 0.2 --out /tmp/datap_bench
    nice -n 10 .venv/bin/python benchmarks/data_noise.py --grid --dataset digits --rate 0.4 --out /tmp/noise_grid
    .venv/bin/python benchmarks/data_noise.py --table --out /tmp/noise_grid --db /tmp/noise_grid/r.sqlite

``--grid`` (see ``grid``): accuracy against kept fraction on the noisy training labels for ``random``,
``keep-hard`` (EL2N), ``ccs`` and ``noise-aware`` (flag by -AUM with the fraction chosen on held-out
data by ``choose_flag_fraction``, then random), and KD on the pruned subset (Ben-Baruch et al. 2024:
a teacher trained on all the noisy data, the student on the subset with ``Distillation``).

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
import os
import time
from pathlib import Path

import numpy as np
import torch
from data_common import SETUPS, auroc, load, machine, proxy_epochs, store, symmetric_noise, train_eval
from data_prune import val_split

from prunekit.data import (
    aum,
    choose_flag_fraction,
    el2n,
    entropy,
    forgetting,
    learned_epoch,
    loss,
    prob_aum,
    record_runs,
    select,
    training_accuracy,
)
from prunekit.data.io import write_json
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
    ap.add_argument("--grid", action="store_true", help="the kept-fraction grid (methods x keeps x seeds, KD)")
    ap.add_argument("--table", action="store_true", help="print the Markdown tables of every grid log in --out")
    ap.add_argument("--db", default="", help="with --table: also add every grid run to this results store")
    ap.add_argument("--keeps", nargs="+", type=float, default=list(GRID_KEEPS))
    ap.add_argument("--steps", type=int, default=None, help="grid: SGD steps per run (default: GRID_STEPS)")
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=GRID_METHODS)
    ap.add_argument("--probe-steps", nargs="+", type=int, default=None,
                    help="only: test accuracy of the grid model on all training data, clean and 10/20/40%% noise, "
                    "at each of these step counts (seeds as --seeds)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("prunekit").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    if args.table:
        print(grid_tables(args.out))
        if args.db:
            print(f"{store_grid(args.out, args.db)} runs in the results store {args.db}")
        return
    if args.probe_steps:
        print(probe(args.dataset, args.probe_steps, args.seeds))
        return
    if args.grid:
        grid(args.dataset, args.rate, args.keeps, args.seeds, args.proxy_seeds, args.out,
             args.steps or GRID_STEPS[args.dataset], args.methods)
        return
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


GRID_KEEPS = (0.9, 0.7, 0.5, 0.3, 0.1)
GRID_STEPS = {"mnist1d": 300, "digits": 300}  # far shorter than data_prune.py's 2000 / 700: the grid fits the CPU
# digits: a 64-256-128-10 MLP (zoo "mlp") instead of LeNet-5: it learns digits in 300 steps at 2 ms a step
GRID_MODELS = {"mnist1d": ("cnn1d", {}), "digits": ("mlp", {"in_features": 64})}
VAL_KEEP = 0.5  # the flag fraction is chosen once, at this keep (every candidate fits), and used at every keep
GRID_METHODS = ("random", "keep-hard", "ccs", "noise-aware", "random+kd", "ccs+kd", "noise-aware+kd")
DEFAULT_METHODS = GRID_METHODS[:-1]  # noise-aware+kd only on request (--methods)
CCS_BETA = {0.3: 0.1, 0.2: 0.2, 0.1: 0.3}  # the CCS README's cut-offs (as in data_prune.py), fixed before any run
KD = {"alpha": 0.5, "temperature": 4.0}  # fixed before any run (the Distillation callback's defaults)
FLAG_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
# random subsets draw with seed 1000 + run seed: symmetric_noise(seed=0) flips the first rate * N of
# randperm(N) under seed 0, which is also what select(..., "random", seed=0) keeps (a first run's seed-0
# random subsets were all-flipped at keep <= rate; those records were discarded)
RANDOM_SEED_OFFSET = 1000


def probe(name: str, steps_list: list[int], seeds: list[int]) -> str:
    """Test accuracy (%) of the grid model trained on all training data, clean and noisy, by step count."""
    model_name, model_kw = GRID_MODELS[name]
    data = load(name)
    rates = (0.0, 0.1, 0.2, 0.4)
    out = [f"{name} ({model_name}), all training data, test accuracy %, mean over seeds {seeds}:", "",
           "| steps | " + " | ".join(f"{r:.0%} noise" for r in rates) + " |", "|---|" + "---|" * len(rates)]
    for steps in steps_list:
        cells = []
        for rate in rates:
            y = symmetric_noise(data.y_train, rate, data.num_classes, seed=0)[0] if rate else data.y_train
            accs = [train_eval(name, data, s, y_train=y, steps=steps,
                               make_model=lambda s: get_model(model_name, seed=s, **model_kw))[0] * 100 for s in seeds]
            cells.append(f"{np.mean(accs):.1f}")
        out.append(f"| {steps} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def grid(name: str, rate: float, keeps: list[float], seeds: list[int], proxy_seeds: list[int], out: Path,
         steps: int, methods: list[str]) -> None:
    """Test accuracy of every (method, keep, seed) on ``rate`` symmetric noise; resumable log ``OUT/<tag>.jsonl``.

    Scores from ``proxy_seeds`` proxies on the noisy training split (``steps`` each): EL2N (auto epoch)
    for keep-hard, the softmax-margin AUM for CCS (README beta), -AUM for the noise-aware flags. The
    noise-aware ``flag_fraction`` is chosen once by ``choose_flag_fraction`` at keep ``VAL_KEEP`` on a
    class-stratified 20% of the *training* split (noisy labels) held out from the proxy (seed
    ``proxy_seeds[0]``) and candidate training (one model per candidate, seed 0), and used at every keep
    (the rule caps it at 1 - keep); the test split is never used for a choice. The KD teacher trains on all
    the noisy training data (seed 0, the same steps).
    """
    from prunekit.training import Distillation, fit
    from prunekit.zoo import get_model

    model_name, model_kw = GRID_MODELS[name]
    tag = f"{name}-noise{rate}-grid" if model_name == SETUPS[name]["model"] else f"{name}-{model_name}-noise{rate}-grid"
    out.mkdir(parents=True, exist_ok=True)
    log_path, t0 = out / f"{tag}.jsonl", time.perf_counter()
    done = {(r["method"], r["keep"], r["seed"]) for r in _records(log_path)}
    data = load(name)
    y_noisy, _ = symmetric_noise(data.y_train, rate, data.num_classes, seed=0)
    setup = SETUPS[name]
    make = lambda s: get_model(model_name, seed=s, **model_kw)  # noqa: E731
    sc = _grid_scores(name, make, (data.x_train, y_noisy), out / f"{tag}-dynamics", proxy_seeds, steps)
    chosen = _chosen_fractions(name, data, y_noisy, make, out, tag, proxy_seeds[:1], steps, [VAL_KEEP])[VAL_KEEP]
    fractions = {k: chosen for k in keeps}
    teacher = None
    if any(m.endswith("+kd") for m in methods):
        teacher_path = out / f"{tag}-teacher.pt"
        teacher = make(0)
        if teacher_path.exists():
            teacher.load_state_dict(torch.load(teacher_path, weights_only=True))
        else:
            fit(teacher, (data.x_train, y_noisy), steps=steps, seed=0, **setup["fit"])
            torch.save(teacher.state_dict(), teacher_path)
    n = len(y_noisy)
    for seed in seeds:  # every keep at seed 0 first, then seed 1, ...
        for keep in keeps:
            for m in [m for m in ("all-noisy", *methods) if (m, keep if m != "all-noisy" else 1.0, seed) not in done]:
                if m == "all-noisy" and keep != keeps[0]:
                    continue
                base = m.removesuffix("+kd")
                idx = None if m == "all-noisy" else _kept(base, sc, keep, seed, n, fractions.get(keep, 0.0))
                cbs = [Distillation(teacher, **KD)] if m.endswith("+kd") else None
                acc, dt = train_eval(name, data, seed, idx=idx, y_train=y_noisy, steps=steps, callbacks=cbs,
                                     make_model=make)
                rec = {"dataset": name, "model": model_name, "rate": rate, "method": m,
                       "keep": 1.0 if m == "all-noisy" else keep,
                       "seed": seed, "accuracy": acc, "train_s": dt, "steps": steps,
                       "flag_fraction": fractions.get(keep) if base == "noise-aware" else None,
                       "loadavg": os.getloadavg()[0]}
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(f"{tag} {m} keep {keep} seed {seed}: {acc * 100:.1f}% ({dt:.1f} s)", flush=True)
    print(f"{tag}: done in {time.perf_counter() - t0:.0f} s; machine {json.dumps(machine())}", flush=True)


def _records(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def _grid_scores(name: str, make, train, root: Path, proxy_seeds: list[int], steps: int) -> dict[str, torch.Tensor]:
    """EL2N (auto epoch), prob-AUM and -AUM of proxies on ``train`` (recorded once, reused)."""
    setup = SETUPS[name]
    runs = record_runs(make, train, root, seeds=proxy_seeds, epochs=proxy_epochs(name, len(train[1]), steps),
                       **setup["fit"])
    return {"el2n": el2n(runs, epoch="auto"), "prob-aum": prob_aum(runs), "aum": aum(runs)}


def _kept(method: str, sc: dict[str, torch.Tensor], keep: float, seed: int, n: int, flag_fraction: float):
    if method == "random":  # not seed 0: symmetric_noise(seed=0) flips the head of the same randperm(n, seed 0)
        return select(torch.zeros(n), keep, "random", seed=RANDOM_SEED_OFFSET + seed)
    if method == "keep-hard":
        return select(sc["el2n"], keep, "keep-hard")
    if method == "ccs":
        return select(sc["prob-aum"], keep, "ccs", beta=CCS_BETA.get(keep, 0.0), strata=50, seed=seed)
    return select(torch.zeros(n), keep, "noise-aware", flag_scores=sc["aum"], flag_fraction=flag_fraction,
                  then="random", seed=seed)


def _chosen_fractions(name: str, data, y_noisy: torch.Tensor, make, out: Path, tag: str, proxy_seeds: list[int],
                      steps: int, keeps: list[float]) -> dict[float, float]:
    """``choose_flag_fraction`` per keep on a held-out 20% of the noisy training split (cached in JSON)."""
    path = out / f"{tag}-flag-val.json"
    state = json.loads(path.read_text()) if path.exists() else {"version": 1, "chosen": {}}
    if all(str(k) in state["chosen"] for k in keeps):
        return {float(k): v["flag_fraction"] for k, v in state["chosen"].items()}
    tr, va = val_split(y_noisy, 0.2, seed=0)
    train, val = (data.x_train[tr], y_noisy[tr]), (data.x_train[va], y_noisy[va])
    sc = _grid_scores(name, make, train, out / f"{tag}-val-dynamics", proxy_seeds, steps)
    state.update({"num_subtrain": len(tr), "num_val": len(va), "val_labels": "noisy", "steps": steps})
    for keep in keeps:
        if str(keep) in state["chosen"]:
            continue
        t = time.perf_counter()
        ch = choose_flag_fraction(torch.zeros(len(tr)), keep, lambda kept: train_eval(
            name, data, 0, idx=kept, train=train, test=val, steps=steps, make_model=make)[0], fractions=FLAG_FRACTIONS,
            flag_scores=sc["aum"], then="random", seed=0)
        state["chosen"][str(keep)] = {"flag_fraction": ch.flag_fraction, "skipped": list(ch.skipped),
                                      "values": {str(k): v for k, v in ch.values.items()},
                                      "search_s": time.perf_counter() - t}
        write_json(path, state)
        print(f"{tag} keep {keep}: flag_fraction {ch.flag_fraction} (validation accuracy by fraction: "
              + ", ".join(f"{k}: {v * 100:.1f}" for k, v in ch.values.items()) + ")", flush=True)
    return {float(k): v["flag_fraction"] for k, v in state["chosen"].items()}


def store_grid(out: Path, db: str) -> int:
    """Add every run of the grid logs in ``out`` to the results store ``db`` (kind "data"); the count."""
    st, n = store(db), 0
    for path in sorted(out.glob("*-grid.jsonl")):
        for r in _records(path):
            keys = ("dataset", "model", "rate", "method", "keep", "seed", "steps", "flag_fraction")
            cfg = {k: r.get(k) for k in keys}
            st.add({"experiment": f"data-noise-{r['dataset']}-{r['rate']}", "kind": "data", "config": cfg,
                    "metrics": {"accuracy": r["accuracy"]}, "timings": {"train_s": r["train_s"]}}, replace=True)
            n += 1
    return n


def grid_tables(out: Path) -> str:
    """One Markdown table per grid log in ``out``: mean (std) test accuracy over seeds, and the differences."""
    md = []
    for path in sorted(out.glob("*-grid.jsonl")):
        recs = _records(path)
        full = [r["accuracy"] * 100 for r in recs if r["method"] == "all-noisy"]
        keeps = sorted({r["keep"] for r in recs if r["method"] != "all-noisy"}, reverse=True)
        methods = [m for m in GRID_METHODS if any(r["method"] == m for r in recs)]
        r0 = recs[0]
        md += [f"**{r0['dataset']} ({r0.get('model', SETUPS[r0['dataset']]['model'])}), {r0['rate']:.0%} symmetric "
               f"noise** ({r0['steps']} steps per run), test accuracy %, mean (std) over seeds; all noisy data "
               f"{np.mean(full):.1f} ({np.std(full):.1f}), {len(full)} seeds:", "",
               "| keep | seeds | " + " | ".join(methods) + " | noise-aware - random | random+kd - random | "
               "ccs+kd - ccs |", "|---" * (len(methods) + 5) + "|"]
        for k in keeps:
            cell, means, seeds = [], {}, set()
            for m in methods:
                a = [r["accuracy"] * 100 for r in recs if r["method"] == m and r["keep"] == k]
                seeds |= {r["seed"] for r in recs if r["method"] == m and r["keep"] == k}
                means[m] = np.mean(a) if a else float("nan")
                cell.append(f"{np.mean(a):.1f} ({np.std(a):.1f})" if len(a) > 1 else (f"{a[0]:.1f}" if a else ""))
            diffs = [means.get(a, np.nan) - means.get(b, np.nan) for a, b in
                     (("noise-aware", "random"), ("random+kd", "random"), ("ccs+kd", "ccs"))]
            counts = sorted({sum(1 for r in recs if r["method"] == m and r["keep"] == k) for m in methods})
            md.append(f"| {k} | {'/'.join(map(str, counts))} | " + " | ".join(cell) + " | "
                      + " | ".join(f"{d:+.1f}" for d in diffs) + " |")
        fr = next((r["flag_fraction"] for r in recs if r["method"] == "noise-aware"), None)
        md += ["", f"noise-aware flag fraction (chosen on validation at keep {VAL_KEEP}): {fr}", ""]
    return "\n".join(md)


if __name__ == "__main__":
    main()
