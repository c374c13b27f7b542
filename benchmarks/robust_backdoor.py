"""Backdoor grid of docs/results/robustness.md: 3 seeds x {mnist1d/cnn1d, digits/lenet5} x {badnets, blended}
x poison {5%, 10%}; defenses none, finetune, fine-pruning, FMP (paper defaults) and FMP with PGD-5, eps 0.2
(ANP with ``--defenses anp``).

Each backdoored model is trained once and every defense runs on a copy of it with the same 5% clean set.
Writes the raw rows to ``--json`` and prints the Markdown tables.

    nice -n 10 python benchmarks/robust_backdoor.py --json docs/results/robustness_backdoor.json
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
from prunekit.robust.backdoor import BackdoorConfig, backdoored, defend_and_measure
from prunekit.robust.defenses import DefenseConfig
from prunekit.robust.fmp import FMPConfig

FROZEN = DefenseConfig()  # the frozen recipe (chosen on development seeds 100, 101): see docs/results/robustness.md
DEFENSES = {"none": ("none", FROZEN), "finetune": ("finetune", FROZEN),
            "fine-pruning": ("fine-pruning", FROZEN), "fmp": ("fmp", FROZEN),
            "fmp-fixed": ("fmp", dataclasses.replace(FROZEN, fmp=FMPConfig(rule="fraction", prune_fraction=0.1))),
            "fmp-loss": ("fmp", dataclasses.replace(FROZEN, fmp=FMPConfig(objective="loss"))),
            "anp": ("anp", FROZEN)}
for _d in (0.05, 0.2, 0.3):  # development variants of the progressive rule's clean-accuracy budget
    DEFENSES[f"fmp-drop{round(100 * _d)}"] = ("fmp", dataclasses.replace(FROZEN, fmp=FMPConfig(max_drop=_d)))
DEFAULT_DEFENSES = ("none", "finetune", "fine-pruning", "fmp", "fmp-fixed", "fmp-loss")
EPOCHS = {"mnist1d": 20, "digits": 30}  # training epochs of each backdoored model


def grid(args: argparse.Namespace) -> list[dict]:
    rows = []
    for dataset in args.datasets:
        for attack in args.attacks:
            for rate in args.poisons:
                for seed in args.seeds:
                    cfg = BackdoorConfig(dataset=dataset, attack=attack, poison=rate, target=0, seed=seed,
                                         clean_fraction=0.05, epochs=args.epochs or EPOCHS[dataset],
                                         width=args.width)
                    bd = cached(cfg, args.cache)
                    for label in args.defenses:
                        name, dcfg = DEFENSES[label]
                        dcfg = dataclasses.replace(dcfg, **args.override)
                        if name == "anp":
                            dcfg = dataclasses.replace(dcfg, anp=dataclasses.replace(dcfg.anp,
                                                                                     iterations=args.anp_iterations))
                        m = defend_and_measure(bd, name, dataclasses.replace(cfg, defense=name, defense_config=dcfg))
                        rows.append({"dataset": dataset, "attack": attack, "poison": rate, "seed": seed,
                                     "defense": label, **{k: v for k, v in m.items() if k != "defense_report"},
                                     "pruned": m["defense_report"].get("pruned", {}),
                                     "best_epoch": m["defense_report"].get("best_epoch")})
                    print(f"{dataset} {attack} {rate} seed {seed}: asr_before {rows[-1]['asr_before']:.3f}",
                          flush=True)
    return rows


def cached(cfg: BackdoorConfig, cache: Path | None):
    """The backdoored model of ``cfg``, trained once per cache folder (development runs only)."""
    if cache is None:
        return backdoored(cfg)
    path = cache / f"{cfg.dataset}-{cfg.attack}-{cfg.poison}-{cfg.seed}-{cfg.epochs}-{cfg.width}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    bd = backdoored(cfg)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(bd, path)
    return bd


def _ms(vals: list[float]) -> str:
    return f"{100 * statistics.mean(vals):.1f} ± {100 * statistics.pstdev(vals):.1f}"


def bar(r: dict) -> bool:
    """The issue's bar on one run: ASR after < 10% and clean accuracy within 3 points of the undefended model."""
    return r["asr_after"] < 0.10 and r["clean_acc_after"] >= r["clean_acc_before"] - 0.03


def tables(rows: list[dict]) -> str:
    out = ["| data / model | attack | poison | defense | clean acc % | ASR % | RA % | ASR before % | "
           "bar: ASR < 10 and clean within 3 pts |", "|---|---|---:|---|---:|---:|---:|---:|---|"]
    cases = sorted({(r["dataset"], r["attack"], r["poison"]) for r in rows}, key=str)
    for case in cases:
        sel = [r for r in rows if (r["dataset"], r["attack"], r["poison"]) == case]
        for d in dict.fromkeys(r["defense"] for r in sel):
            rs = [r for r in sel if r["defense"] == d]
            passed = [r["seed"] for r in rs if bar(r)]
            ok = f"{len(passed)}/{len(rs)} seeds" + (f" ({', '.join(map(str, passed))})" if passed else "")
            out.append(f"| {case[0]} / {rs[0]['model']} | {case[1]} | {case[2]:.0%} | {d} | "
                       f"{_ms([r['clean_acc_after'] for r in rs])} | {_ms([r['asr_after'] for r in rs])} | "
                       f"{_ms([r['ra_after'] for r in rs])} | {_ms([r['asr_before'] for r in rs])} | "
                       f"{ok} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs of each backdoored model (default: 20 MNIST-1D, 30 digits)")
    p.add_argument("--width", type=int, default=None, help="feature maps per convolution (default: the zoo's)")
    p.add_argument("--datasets", nargs="+", default=["mnist1d", "digits"])
    p.add_argument("--attacks", nargs="+", default=["badnets", "blended"])
    p.add_argument("--poisons", nargs="+", type=float, default=[0.05, 0.10])
    p.add_argument("--defenses", nargs="+", default=list(DEFAULT_DEFENSES), choices=list(DEFENSES))
    p.add_argument("--anp-iterations", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", type=Path, default=None, help="reuse backdoored models across development runs")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="development only: override DefenseConfig fields of every defense, e.g. lr=0.003")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    args.override = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    rows = grid(args)
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(rows, indent=1))
    print(tables(rows))
    print(f"\ntotal {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
