"""Accuracy against kept fraction for data-pruning methods, equal SGD steps for every kept fraction.

    nice -n 10 .venv/bin/python benchmarks/data_prune.py --dataset mnist1d --seeds 0 1 2 \
        --out /tmp/datap_bench --db /tmp/datap_bench/results.sqlite

Scores come from 3 full-data proxy runs (seeds 100-102, recorded by ``DynamicsRecorder``, as many
steps as one subset run): EL2N at the early epoch ``learned_epoch`` picks (the first epoch at which the
proxies' mean training accuracy reaches 0.9 of its final value; printed) averaged over the runs,
forgetting and -AUM (logit margins, Pleiss et al.) over all epochs. CCS stratifies the negated
softmax-margin AUM (``prob-aum``, the "accumulated margin" of the CCS code) into 50 strata after
cutting the beta hardest by it (the CCS README's "CCS with AUM"); ``ccs-balanced`` runs the same CCS
inside each class. ``--ccs-beta readme`` fixes beta per kept fraction before any run (``CCS_BETA``,
the README's CIFAR values); ``--ccs-beta val`` chooses it per method and kept fraction with
``choose_beta`` on a seeded, class-stratified 20% of the *training* split held out as validation
(proxies recorded again on the other 80%, each candidate subset trained with ``--val-seeds`` for the
same steps, mean validation accuracy), then trains the test seeds on the full training split with the
chosen beta, logged as ``ccs-val`` / ``ccs-balanced-val``; the choices go to
``OUT/<dataset>-ccs-beta-val.json`` (resumable: every validation run is cached there). Prototype scores come
from k-means on fixed random ConvNet features (``RandomConvEncoder``; 10 clusters, DBP 20). Then for
each method, kept fraction and seed a fresh model trains for the setup's fixed number of steps on
the kept examples and is tested on the full test split. RS2 trains on a fresh random subset every
epoch (same steps). Results go to ``OUT/<dataset>.jsonl`` (resumable), the results store (kind
"data"), a Markdown table and plots.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from data_common import SETUPS, load, machine, proxy_epochs, store, train_eval

from prunekit.data import (
    RandomConvEncoder,
    RS2Sampler,
    aum,
    choose_beta,
    cluster_complexity,
    el2n,
    embed,
    forgetting,
    kmeans,
    learned_epoch,
    prob_aum,
    record_runs,
    select,
    training_accuracy,
)
from prunekit.data.io import write_json
from prunekit.data.report import accuracy_table, plot_accuracy_vs_keep, plot_score_histograms
from prunekit.data.ssl import train_contrastive
from prunekit.zoo import get_model

KEEPS = (0.9, 0.7, 0.5, 0.3, 0.2, 0.1)
LOW_KEEPS = (0.05,)  # extra kept fractions for random and RS2 only
CCS_BETA = {0.3: 0.1, 0.2: 0.2, 0.1: 0.3, 0.05: 0.3}  # fixed before the runs, as in the CCS README
METHODS = ("random", "el2n-hard", "el2n-easy", "forgetting-hard", "aum-hard", "ccs", "ccs-balanced", "prototype-hard",
           "dbp", "prototype-ssl", "dbp-ssl", "rs2", "rs2-repl")
CCS_METHODS = ("ccs", "ccs-balanced")
# columns of the Markdown table: the methods, the CCS columns with validation-chosen beta, and the EL2N
# columns of the earlier protocol (fixed epoch 3 = 10% of the proxy run), kept in the log under these names
COLUMNS = (*METHODS, "ccs-val", "ccs-balanced-val", "el2n-hard-e3", "el2n-easy-e3")


def scores_for(name: str, data: Any, work: Path, proxy_seeds: list[int]) -> dict[str, Any]:
    """Every score the methods need, with the time each took (the cost of selection)."""
    setup = SETUPS[name]
    e = proxy_epochs(name, len(data.y_train))
    t = time.perf_counter()
    root = work / f"{name}-dynamics"
    runs = record_runs(lambda s: get_model(setup["model"], seed=s), data.train, root, seeds=proxy_seeds, epochs=e,
                       **setup["fit"])
    cost = root / "proxy_cost.json"  # the proxies' training time, kept for reruns that reuse them
    if not cost.exists():
        cost.write_text(json.dumps({"proxy_s": time.perf_counter() - t}))
    proxy_s = json.loads(cost.read_text())["proxy_s"]
    el2n_epoch = learned_epoch(runs)  # first epoch at 0.9 of the final training accuracy
    acc = training_accuracy(runs)
    print(f"{name}: EL2N epoch (auto) = {el2n_epoch} of {e}; proxies' mean training accuracy there "
          f"{acc[el2n_epoch]:.3f}, final {acc[-1]:.3f}", flush=True)
    t = time.perf_counter()
    emb = embed(RandomConvEncoder(dim=64, seed=0), data.x_train.reshape(len(data.x_train), -1))
    cl10, cl20 = kmeans(emb, 10, seed=0), kmeans(emb, 20, seed=0)
    proto_s = time.perf_counter() - t
    ssl = ssl_scores(name, data, work)
    return {**ssl, "el2n": el2n(runs, epoch=el2n_epoch), "forgetting": forgetting(runs), "aum": aum(runs),
            "prob-aum": prob_aum(runs), "labels": data.y_train,
            "prototype": torch.from_numpy(1.0 - cl10.cosine.astype(np.float64)),
            "dbp_scores": torch.from_numpy(1.0 - cl20.cosine.astype(np.float64)), "dbp_clusters": cl20.assign,
            "dbp_complexity": cluster_complexity(cl20),
            "meta": {"proxy_epochs": e, "el2n_epoch": el2n_epoch, "proxy_seeds": proxy_seeds,
                     "proxy_s": proxy_s, "prototype_s": proto_s, "ssl_s": ssl["ssl_s"],
                     "proxy_train_acc_last": float(np.mean([r.field("correct", -1).mean() for r in runs]))}}


def ssl_scores(name: str, data: Any, work: Path, epochs: int = 20) -> dict[str, Any]:
    """Prototype and DBP inputs on SimCLR features (``train_contrastive``; cached), with the SSL training time."""
    path, cost = work / f"{name}-ssl-emb.npy", work / f"{name}-ssl-cost.json"
    if not (path.exists() and cost.exists()):
        t = time.perf_counter()
        enc = train_contrastive(data.x_train, epochs=epochs, seed=0)
        embed(enc, data.x_train.reshape(len(data.x_train), -1), out=path)
        write_json(cost, {"ssl_train_embed_s": time.perf_counter() - t, "epochs": epochs, "losses": enc.losses})
    emb = np.load(path)
    t = time.perf_counter()
    cl10, cl20 = kmeans(emb, 10, seed=0), kmeans(emb, 20, seed=0)
    ssl_s = json.loads(cost.read_text())["ssl_train_embed_s"] + time.perf_counter() - t
    return {"prototype-ssl": torch.from_numpy(1.0 - cl10.cosine.astype(np.float64)),
            "dbp-ssl_scores": torch.from_numpy(1.0 - cl20.cosine.astype(np.float64)),
            "dbp-ssl_clusters": cl20.assign, "dbp-ssl_complexity": cluster_complexity(cl20), "ssl_s": ssl_s}


def val_split(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded class-stratified hold-out of the training split: (sub-train indices, validation indices)."""
    val = select(torch.zeros(len(y)), fraction, "class-balanced", labels=y, within="random", seed=seed)
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[val] = False
    return torch.nonzero(rest).flatten(), val


def val_betas(name: str, data: Any, out: Path, proxy_seeds: list[int], keeps: list[float], methods: list[str],
              val_seeds: list[int], val_fraction: float) -> dict[str, dict[float, float]]:
    """CCS's beta per method and kept fraction chosen by ``choose_beta`` on validation held out from training.

    The test split is never used: proxies are recorded on the sub-train part (same seeds, as many steps
    as one run), each candidate subset of it trains ``val_seeds`` fresh models for the setup's steps,
    and the value is their mean accuracy on the held-out part.
    """
    tr, va = val_split(data.y_train, val_fraction, seed=0)
    train, val = (data.x_train[tr], data.y_train[tr]), (data.x_train[va], data.y_train[va])
    setup = SETUPS[name]
    runs = record_runs(lambda s: get_model(setup["model"], seed=s), train, out / f"{name}-val-dynamics",
                       seeds=proxy_seeds, epochs=proxy_epochs(name, len(tr)), **setup["fit"])
    s = prob_aum(runs)
    path = out / f"{name}-ccs-beta-val.json"
    state = json.loads(path.read_text()) if path.exists() else {"version": 1, "evals": {}, "chosen": {}}
    state.update({"num_subtrain": len(tr), "num_val": len(va), "val_seeds": val_seeds, "steps": setup["steps"]})

    def evaluate(kept: torch.Tensor) -> float:
        """Mean validation accuracy of ``val_seeds`` models trained on ``kept`` (cached by subset and seeds)."""
        key = hashlib.sha1(kept.numpy().tobytes()).hexdigest() + f":{setup['steps']}:{val_seeds}"
        if key not in state["evals"]:
            state["evals"][key] = float(np.mean([train_eval(name, data, v, idx=kept, train=train, test=val)[0]
                                                 for v in val_seeds]))
            write_json(path, state)
        return state["evals"][key]

    chosen: dict[str, dict[float, float]] = {}
    for m in [m for m in methods if m in CCS_METHODS]:
        extra = {"rule": "class-balanced", "labels": train[1], "within": "ccs"} if m == "ccs-balanced" else {}
        for keep in keeps:
            ch = choose_beta(s, keep, evaluate, strata=50, seed=0, **extra)
            chosen.setdefault(m, {})[keep] = ch.beta
            state["chosen"][f"{m}@{keep}"] = {"beta": ch.beta, "values": {str(b): v for b, v in ch.values.items()},
                                             "skipped": list(ch.skipped)}
            write_json(path, state)
            vals = ", ".join(f"{b}: {v * 100:.1f}" for b, v in ch.values.items())
            print(f"{name} {m} keep {keep}: beta {ch.beta} (validation accuracy % by beta: {vals})", flush=True)
    return chosen


def kept_for(method: str, sc: dict[str, Any], keep: float, seed: int, n: int,
             beta: float | None = None) -> torch.Tensor | None:
    """Kept indices of a static method (None for RS2, which samples per epoch); ``beta``: CCS's cut-off."""
    beta = CCS_BETA.get(keep, 0.0) if beta is None else beta
    if method == "random":
        return select(torch.zeros(n), keep, "random", seed=seed)
    if method in ("el2n-hard", "el2n-easy"):
        return select(sc["el2n"], keep, "keep-hard" if method.endswith("hard") else "keep-easy")
    if method in ("forgetting-hard", "aum-hard", "prototype-hard"):
        return select(sc[method.split("-")[0]], keep, "keep-hard")
    if method == "ccs":  # the CCS code's configuration: strata over the softmax-margin AUM, cut-off by it
        return select(sc["prob-aum"], keep, "ccs", beta=beta, strata=50, seed=seed)
    if method == "ccs-balanced":  # the same CCS run inside each class (class quotas as in the full data)
        return select(sc["prob-aum"], keep, "class-balanced", labels=sc["labels"], within="ccs",
                      beta=beta, strata=50, seed=seed)
    if method == "prototype-ssl":
        return select(sc["prototype-ssl"], keep, "keep-hard")
    if method in ("dbp", "dbp-ssl"):
        return select(sc[f"{method}_scores"], keep, "dbp", clusters=sc[f"{method}_clusters"],
                      complexity=sc[f"{method}_complexity"], temperature=0.5, seed=seed)
    return None


def run_grid(name: str, methods: list[str], keeps: list[float], seeds: list[int], out: Path, db: str | None,
             proxy_seeds: list[int], betas: dict[str, dict[float, float]] | None = None,
             ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train every (method, keep, seed) not already in ``OUT/<name>.jsonl``; return all records.

    ``betas``: CCS's beta per method and kept fraction chosen on validation; those CCS methods are
    logged as ``<method>-val``. Without it CCS uses ``CCS_BETA``.
    """
    data = load(name)
    n = len(data.y_train)
    sc = scores_for(name, data, out, proxy_seeds)
    log_path = out / f"{name}.jsonl"
    done = {(r["method"], r["keep_fraction"], r["seed"]): r for r in _read(log_path)}
    st = store(db)
    for seed in seeds:
        if ("full", 1.0, seed) not in done:
            acc, dt = train_eval(name, data, seed)
            done[("full", 1.0, seed)] = _log(log_path, st, name, "full", 1.0, seed, acc, dt, n)
        for keep in list(keeps) + list(LOW_KEEPS):
            for method in methods:
                chosen = (betas or {}).get(method, {}).get(keep)
                label = f"{method}-val" if chosen is not None else method
                if (label, keep, seed) in done or not _planned(method, keep):
                    continue
                idx = kept_for(method, sc, keep, seed, n, beta=chosen)
                sampler = None if idx is not None else RS2Sampler(n, keep, replacement=method == "rs2-repl", seed=seed)
                acc, dt = train_eval(name, data, seed, idx=idx, sampler=sampler)
                beta = (CCS_BETA.get(keep, 0.0) if chosen is None else chosen) if method in CCS_METHODS else None
                done[(label, keep, seed)] = _log(log_path, st, name, label, keep, seed, acc, dt, n, beta)
    return list(done.values()), sc


def _planned(method: str, keep: float) -> bool:
    if method.startswith("rs2"):
        return keep <= 0.3
    return keep in KEEPS or method == "random"


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


def _log(path: Path, st: Any, name: str, method: str, keep: float, seed: int, acc: float, dt: float,
         n: int, beta: float | None = None) -> dict[str, Any]:
    rec = {"dataset": name, "method": method, "keep_fraction": keep, "seed": seed, "accuracy": acc, "train_s": dt,
           "steps": SETUPS[name]["steps"], "num_train": n}
    if beta is not None:
        rec["ccs_beta"] = beta
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
    if st is not None:
        cfg = {"dataset": name, "method": method, "keep_fraction": keep, "seed": seed, "steps": SETUPS[name]["steps"],
               "model": SETUPS[name]["model"], "ccs_beta": beta}
        st.add({"experiment": f"data-prune-{name}", "kind": "data", "config": cfg,
                "metrics": {"accuracy": acc}, "timings": {"train_s": dt}}, replace=True)
    logging.info("%s %s keep=%.2f seed=%d acc=%.4f (%.1fs)", name, method, keep, seed, acc, dt)
    return rec


def markdown(name: str, records: list[dict[str, Any]], methods: list[str], meta: dict[str, Any]) -> str:
    """Mean (std) test accuracy in % per kept fraction and method, with the claim checks."""
    tab = accuracy_table(records)
    keeps = sorted({r["keep_fraction"] for r in records if r["method"] != "full"}, reverse=True)
    cols = [m for m in methods if m in tab]
    lines = ["| keep | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for k in keeps:
        cells = [f"{tab[m][k][0] * 100:.1f} ({tab[m][k][1] * 100:.1f})" if k in tab[m] else "" for m in cols]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    full = tab.get("full", {}).get(1.0)
    if full:
        lines.append(f"\nFull data ({SETUPS[name]['steps']} steps): {full[0] * 100:.1f} ({full[1] * 100:.1f}).")
    lines.append(f"Selection cost: proxy runs {meta['proxy_s']:.0f} s ({len(meta['proxy_seeds'])} runs x "
                 f"{meta['proxy_epochs']} epochs), prototype embedding + k-means {meta['prototype_s']:.1f} s, "
                 f"SSL training + embedding + k-means {meta['ssl_s']:.1f} s; "
                 f"EL2N epoch {meta['el2n_epoch']}; proxy final train accuracy {meta['proxy_train_acc_last']:.3f}.")
    lines += [""] + checks(tab)
    return "\n".join(lines)


def checks(tab: dict[str, dict[float, tuple[float, float, int]]]) -> list[str]:
    """The issue's claims, evaluated on the means (points = percentage points)."""
    def m(method: str, k: float) -> float | None:
        v = tab.get(method, {}).get(k)
        return None if v is None else v[0] * 100

    out = []
    current = (*METHODS, "ccs-val", "ccs-balanced-val")  # not the columns of earlier runs kept in the log
    scored = [x for x in tab if x in current and x not in ("random", "rs2", "rs2-repl")]
    for k in (0.9, 0.7):
        if m("random", k) is not None:
            best = max(scored, key=lambda x: m(x, k) or -1)
            out.append(f"- keep {k}: best score-based {best} {m(best, k):.1f} vs random {m('random', k):.1f} "
                       f"({m(best, k) - m('random', k):+.1f} pts; claim >= -0.5)")
    for k in (0.2, 0.1):
        if m("el2n-hard", k) is not None:
            out.append(f"- keep {k}: EL2N keep-hard {m('el2n-hard', k):.1f} vs random {m('random', k):.1f} "
                       f"({m('el2n-hard', k) - m('random', k):+.1f} pts; claim < 0)")
    for c in ("ccs", "ccs-balanced", "ccs-val", "ccs-balanced-val"):
        if c not in tab:
            continue
        diffs = {k: m(c, k) - m("random", k) for k in tab[c] if m("random", k) is not None}
        worst = min(diffs, key=diffs.get)
        out.append(f"- {c} - random, worst over keeps: {diffs[worst]:+.1f} pts at keep {worst} (claim >= -1)")
        for k in (0.3, 0.2, 0.1):
            if m("el2n-hard", k) is not None and m(c, k) is not None:
                out.append(f"- keep {k}: {c} {m(c, k):.1f} vs EL2N keep-hard {m('el2n-hard', k):.1f} (claim >)")
    for k in (0.1, 0.05):
        for v in ("rs2", "rs2-repl"):
            if m(v, k) is not None:
                out.append(f"- keep {k}: {v} {m(v, k):.1f} vs static random {m('random', k):.1f} "
                           f"({m(v, k) - m('random', k):+.1f} pts; claim > 0)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=sorted(SETUPS), default="mnist1d")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--keeps", nargs="+", type=float, default=list(KEEPS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--proxy-seeds", nargs="+", type=int, default=[100, 101, 102])
    ap.add_argument("--out", type=Path, default=Path("bench-out/data"))
    ap.add_argument("--db", default="prunekit-results.sqlite", help="results store ('' for none)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None, help="override the setup's steps (smoke runs)")
    ap.add_argument("--ccs-beta", choices=("readme", "val"), default="readme",
                    help="CCS cut-off: fixed per keep (CCS_BETA) or chosen on validation held out from training")
    ap.add_argument("--val-seeds", nargs="+", type=int, default=[0, 1], help="--ccs-beta val: training seeds")
    ap.add_argument("--val-fraction", type=float, default=0.2, help="--ccs-beta val: share of the training split")
    args = ap.parse_args()
    if args.steps:
        SETUPS[args.dataset]["steps"] = args.steps
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("prunekit").setLevel(logging.WARNING)  # no per-epoch lines from fit
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    betas = None
    if args.ccs_beta == "val":
        betas = val_betas(args.dataset, load(args.dataset), args.out, args.proxy_seeds, args.keeps, args.methods,
                          args.val_seeds, args.val_fraction)
    records, sc = run_grid(args.dataset, args.methods, args.keeps, args.seeds, args.out, args.db, args.proxy_seeds,
                           betas)
    md = markdown(args.dataset, records, ["full", *COLUMNS], sc["meta"])
    if betas:
        md += "\n\nCCS beta chosen on validation (per keep): " + "; ".join(
            f"{m}: " + ", ".join(f"{k}: {b}" for k, b in bk.items()) for m, bk in betas.items())
    md += f"\n\nMachine: {json.dumps(machine())}; wall time {time.perf_counter() - t:.0f} s."
    (args.out / f"{args.dataset}.md").write_text(md + "\n")
    plotted = (*METHODS, "ccs-val", "ccs-balanced-val")  # not the columns of earlier runs kept in the log
    plot_accuracy_vs_keep([r for r in records if r["method"] in plotted], args.out / f"{args.dataset}-accuracy.png",
                          title=f"{args.dataset}: accuracy vs kept fraction (equal steps)")
    plot_score_histograms({k: sc[k] for k in ("el2n", "forgetting", "aum", "prototype", "prototype-ssl")},
                          args.out / f"{args.dataset}-scores.png", title=f"{args.dataset} scores")
    print(md)


if __name__ == "__main__":
    main()
