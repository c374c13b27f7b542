"""HideNseek vs binary supermask vs FedAvg-then-prune vs dense FedAvg on Dirichlet splits of MNIST-1D and digits.

    nice -n 10 python benchmarks/federated.py --datasets digits mnist1d --alphas 0.5 0.1 --sparsities 0.5 0.9 \\
        --seeds 0 1 2 --rounds 30 --out docs/results/federated.jsonl

Every run is appended to ``--out`` as one JSON line (metrics.json's keys) as soon as it ends, so a sweep
stopped early keeps what finished and a restart skips what is there. ``--engine local`` (the default here)
runs the same server and client code as Flower's simulation in one process; ``tests/federated`` checks
that both engines give identical rows. ``--table`` prints the Markdown tables of docs/results/federated.md.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from prunekit.federated import FedConfig, run_federated

METHODS = ("fedavg", "fedavg-prune", "binary-supermask", "hidenseek")


def key(d: dict) -> tuple:
    return (d["dataset"], float(d["alpha"]), d["method"], float(d["sparsity"] or 0.0), int(d["seed"]))


def grid(args: argparse.Namespace) -> list[FedConfig]:
    out = []
    for seed in args.seeds:
        for ds in args.datasets:
            for alpha in args.alphas:
                for s in args.sparsities:
                    for m in args.methods:
                        if m == "fedavg" and s != args.sparsities[0]:
                            continue  # dense: one run per data set, alpha and seed
                        out.append(FedConfig(dataset=ds, clients=args.clients, alpha=alpha, rounds=args.rounds,
                                             method=m, sparsity=None if m == "fedavg" else s, seed=seed,
                                             fraction=args.fraction, local_epochs=args.local_epochs,
                                             vote_rate=args.vote_rate))
    return out


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    done = {key(json.loads(line)["config"]) for line in out.read_text().splitlines()} if out.exists() else set()
    torch.set_num_threads(1)
    for cfg in grid(args):
        if key(cfg.to_dict()) in done:
            continue
        t0 = time.perf_counter()
        m = run_federated(cfg, engine=args.engine).metrics()
        m["machine"] = f"{platform.machine()}, {args.machine}"
        with out.open("a") as f:
            f.write(json.dumps(m) + "\n")
        print(f"{cfg.dataset} a={cfg.alpha} {cfg.method} s={cfg.sparsity} seed={cfg.seed}: acc {m['accuracy']:.3f} "
              f"global {m['global_accuracy']:.3f} up {m['uplink_bytes']} B ({time.perf_counter() - t0:.0f} s)",
              flush=True)


def _ms(vals: list[float]) -> str:
    if not vals:
        return ""
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return f"{100 * mean:.1f} ± {100 * sd:.1f} (n={len(vals)})"


def table(path: str) -> str:
    runs = [json.loads(line) for line in Path(path).read_text().splitlines()]
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        c = r["config"]
        cells[(c["dataset"], c["alpha"], c["method"], c["sparsity"])].append(r)
    lines = ["| data set | alpha | method | sparsity | client acc (%) | global acc (%) | uplink MB | downlink MB |"
             " uplink / dense |", "|---|---|---|---|---|---|---|---|---|"]
    dense_up = {(k[0], k[1]): sum(r["uplink_bytes"] for r in v) / len(v) for k, v in cells.items() if k[2] == "fedavg"}
    for k in sorted(cells, key=lambda k: (k[0], -k[1], k[3], METHODS.index(k[2]) if k[2] in METHODS else 9)):
        v = cells[k]
        up = sum(r["uplink_bytes"] for r in v) / len(v)
        down = sum(r["downlink_bytes"] for r in v) / len(v)
        ratio = f"{up / dense_up[(k[0], k[1])]:.4f}" if (k[0], k[1]) in dense_up else ""
        lines.append(f"| {k[0]} | {k[1]:g} | {k[2]} | {k[3]:g} | {_ms([r['accuracy'] for r in v])} | "
                     f"{_ms([r['global_accuracy'] for r in v])} | {up / 1e6:.3f} | {down / 1e6:.3f} | {ratio} |")
    return "\n".join(lines)


def bar_table(path: str) -> str:
    """The issue's bar per setting: HideNseek vs binary supermask (final client accuracy, seed by seed) and
    HideNseek's uplink against dense FedAvg's."""
    runs = [json.loads(line) for line in Path(path).read_text().splitlines()]
    by: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for r in runs:
        c = r["config"]
        by[(c["dataset"], c["alpha"], c["method"], c["sparsity"])][c["seed"]] = r
    lines = ["| data set | alpha | sparsity | hidenseek acc (%) | binary-supermask acc (%) | seeds hidenseek > binary |"
             " hidenseek - binary (pts) | last 5 rounds: hidenseek / binary (%) | seeds hidenseek > binary, last 5 |"
             " dense fedavg acc (%) | hidenseek uplink / dense |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def last5(r: dict) -> float:
        accs = [x["accuracy"] for x in r["per_round"][-5:]]
        return sum(accs) / len(accs)

    for (ds, al, m, sp) in sorted(k for k in by if k[2] == "hidenseek"):
        h, b = by[(ds, al, m, sp)], by.get((ds, al, "binary-supermask", sp), {})
        d = by.get((ds, al, "fedavg", 0.0), {})
        seeds = sorted(set(h) & set(b))
        wins = sum(h[s]["accuracy"] > b[s]["accuracy"] for s in seeds)
        diff = sum(h[s]["accuracy"] - b[s]["accuracy"] for s in seeds) / max(1, len(seeds))
        wins5 = sum(last5(h[s]) > last5(b[s]) for s in seeds)
        h5 = sum(last5(r) for r in h.values()) / len(h)
        b5 = sum(last5(r) for r in b.values()) / max(1, len(b))
        dense_up = sum(r["uplink_bytes"] for r in d.values()) / len(d) if d else float("nan")
        up = sum(r["uplink_bytes"] for r in h.values()) / len(h)
        lines.append(f"| {ds} | {al:g} | {sp:g} | {_ms([r['accuracy'] for r in h.values()])} | "
                     f"{_ms([r['accuracy'] for r in b.values()])} | {wins}/{len(seeds)} | {100 * diff:+.1f} | "
                     f"{100 * h5:.1f} / {100 * b5:.1f} | {wins5}/{len(seeds)} | "
                     f"{_ms([r['accuracy'] for r in d.values()])} | {up / dense_up:.4f} |")
    return "\n".join(lines)


def curves(path: str, dataset: str, alpha: float, sparsity: float, every: int = 1) -> str:
    """Mean client accuracy (%) after every ``every``-th round, and cumulative uplink MB, per method."""
    runs = [json.loads(line) for line in Path(path).read_text().splitlines()]
    pick = [r for r in runs if r["config"]["dataset"] == dataset and r["config"]["alpha"] == alpha
            and r["config"]["sparsity"] in (0.0, sparsity)]
    by: dict[str, list[dict]] = defaultdict(list)
    for r in pick:
        by[r["config"]["method"]].append(r)
    if not by:
        return ""
    n = min(len(r["per_round"]) for r in pick)
    shown = [i for i in range(n) if i == 0 or (i + 1) % every == 0 or i == n - 1]
    head = "| method | " + " | ".join(f"r{i + 1}" for i in shown) + " | uplink MB after r1 / r" + str(n) + " |"
    lines = [head, "|---|" + "---|" * (len(shown) + 1)]
    for m in sorted(by, key=lambda m: METHODS.index(m) if m in METHODS else 9):
        rs = by[m]
        accs = [sum(r["per_round"][i]["accuracy"] for r in rs) / len(rs) for i in shown]
        up1 = rs[0]["per_round"][0]["uplink_bytes_cum"] / 1e6
        upn = rs[0]["per_round"][n - 1]["uplink_bytes_cum"] / 1e6
        lines.append(f"| {m} (n={len(rs)}) | " + " | ".join(f"{100 * a:.1f}" for a in accs) +
                     f" | {up1:.3f} / {upn:.3f} |")
    return f"{dataset}, alpha {alpha:g}, sparsity {sparsity:g} (fedavg dense):\n\n" + "\n".join(lines)


def to_store(path: str, db: str) -> None:
    """Write every run's per-round rows into the SQLite results store ``db`` (for ``prunekit report``)."""
    from prunekit.bench.store import ResultsStore
    from prunekit.cli.federated import store_records

    with ResultsStore(db) as store:
        for line in Path(path).read_text().splitlines():
            m = json.loads(line)
            c = m["config"]
            for rec in store_records(m, f"federated-{c['dataset']}-alpha{c['alpha']:g}"):
                store.add(rec, replace=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=["digits", "mnist1d"])
    p.add_argument("--alphas", nargs="+", type=float, default=[0.5, 0.1])
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.9])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--fraction", type=float, default=1.0)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--vote-rate", type=float, default=0.25, help="supermask servers' vote memory (FedConfig.vote_rate)")
    p.add_argument("--engine", default="local", choices=["local", "flwr"])
    p.add_argument("--machine", default="2-core shared CPU VM, other jobs running")
    p.add_argument("--out", default="docs/results/federated.jsonl")
    p.add_argument("--table", action="store_true", help="print the tables of --out and exit")
    p.add_argument("--every", type=int, default=5, help="--table: curves show every N-th round")
    p.add_argument("--to-db", help="write the per-round rows of --out into this SQLite store and exit")
    args = p.parse_args(argv)
    if args.to_db:
        to_store(args.out, args.to_db)
        return
    if args.table:
        print(table(args.out))
        print("\n" + bar_table(args.out))
        for ds in args.datasets:
            for a in args.alphas:
                for sp in args.sparsities:
                    print("\n" + curves(args.out, ds, a, sp, args.every))
        return
    run(args)


if __name__ == "__main__":
    sys.exit(main())
