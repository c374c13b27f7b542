"""The zoo ViT and vit-softhgnn on digits: token pruning accuracy vs keep, SoftHGNN k / load balancing, usage.

``--part vit``: the plain zoo ViT (2x2 patches of the 8x8 digits, dim 64, depth 2: vit-softhgnn's width)
is trained for each seed (the SoftHGNN baseline); a depth-4 one (seed 0) is then patched by each token
method at each keep, pruning after block 0 or spread over blocks 0-2, and its test accuracy measured
(no fine-tuning). ``--part softhgnn``: vit-softhgnn for each k and with
(balance 0.01) / without (0) the load-balancing loss, each seed; test accuracy, MACs per image and the
hyperedges each test input uses (first block) are stored, and the usage of seed 0, k=4 is plotted.

    nice -n 10 python benchmarks/tokens_digits.py --part vit --out docs/results/tokens/vit.json
    nice -n 10 python benchmarks/tokens_digits.py --part softhgnn --ks 2 4 --out docs/results/tokens/hgnn_a.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from prunekit.accounting import count_macs
from prunekit.io import atomic_write_text
from prunekit.tokens import TokenPrune, apply_
from prunekit.training.loop import evaluate, fit
from prunekit.zoo import get_dataset, get_model

VIT = dict(image_size=8, patch_size=2, in_channels=1, num_classes=10, dim=64, depth=2, num_heads=4, head_dim=16,
           mlp_dim=128)
METHODS = ("zero-tprune", "attention", "tome", "random")


def train(name: str, kwargs: dict, data, args, seed: int):
    model = get_model(name, seed=seed, **kwargs)
    t = time.perf_counter()
    fit(model, data.train, epochs=args.epochs, lr=2e-3, optimizer="adamw", weight_decay=0.05, batch_size=32,
        seed=seed)
    acc = evaluate(model.eval(), data.test)["accuracy"]
    return model, {"seed": seed, "accuracy": acc, "train_s": time.perf_counter() - t,
                   "macs_per_image": count_macs(model, data.test[0][:1])}


def save(args, res: dict) -> None:
    """Write what is measured so far."""
    res["meta"] = {"command": "benchmarks/tokens_digits.py " + " ".join(
        f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items() if k != "out"),
        "machine": "2-core shared CPU VM, other jobs running", "torch": torch.__version__}
    atomic_write_text(args.out, json.dumps(res, indent=1))


def part_vit(data, args) -> dict:
    runs = []
    for seed in args.seeds:
        _, row = train("vit", VIT, data, args, seed)
        runs.append(row)
        print(f"vit seed {seed}: {row['accuracy']:.4f}", flush=True)
        save(args, {"vit_runs": runs})
    deep_kw = {**VIT, "depth": 4}
    deep, row = train("vit", deep_kw, data, args, args.seeds[0])
    x, y = data.test
    table = []
    for layers in ((0,), (0, 1, 2)):
        for keep in args.keep:
            for method in METHODS:
                m = get_model("vit", **deep_kw)
                m.load_state_dict(deep.state_dict())
                patch = apply_(m.eval(), TokenPrune(method=method, keep=keep, layers=layers))
                with torch.no_grad():
                    acc = float((m(x).argmax(1) == y).float().mean())
                table.append({"layers": list(layers), "keep": keep, "method": method, "accuracy": acc,
                              "tokens_kept": patch.tokens_kept(),
                              "macs_ratio": count_macs(m, x[:64]) / count_macs(deep, x[:64])})
                print(f"vit-4 layers {layers} keep {keep} {method}: {acc:.4f}", flush=True)
                save(args, {"vit_runs": runs, "vit_deep": row, "vit_tokens": table})
    return {"vit_runs": runs, "vit_deep": row, "vit_tokens": table}


def part_softhgnn(data, args) -> dict:
    rows = []
    for k in args.ks:
        for balance in (0.01, 0.0):
            for seed in args.seeds:
                model, row = train("vit-softhgnn", dict(top_k=k, balance=balance), data, args, seed)
                with torch.no_grad():
                    model(data.test[0])
                usage = model.usage()[0]  # (N_test, M) first block
                row.update(k=k, balance=balance, usage_share=usage.float().mean(0).tolist(),
                           usage_first=usage[:40].int().tolist())
                rows.append(row)
                print(f"softhgnn k {k} balance {balance} seed {seed}: {row['accuracy']:.4f}", flush=True)
                save(args, {"softhgnn": rows})
    return {"softhgnn": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("vit", "softhgnn"), required=True)
    p.add_argument("--ks", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--keep", type=float, nargs="+", default=[1.0, 0.8, 0.66, 0.5])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = get_dataset("digits")
    save(args, part_vit(data, args) if args.part == "vit" else part_softhgnn(data, args))

if __name__ == "__main__":
    main()
