"""Markdown tables from the structured benchmarks' JSON files (docs/results/structured_*.json).

    .venv/bin/python benchmarks/structured_report.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def _load(name: str) -> dict | None:
    p = RESULTS / name
    return json.loads(p.read_text()) if p.is_file() else None


def coverage(d: dict) -> str:
    def cell(ok: bool, ratio: float | None, err: str | None) -> str:
        if ok:
            return f"ok ({ratio:.3f})"
        return f"**fail**: {err}" if ratio is None else f"**fail** ({ratio:.3f}): {err}"

    rows = ["| model | MACs kept (target) | prunekit: result (MACs kept) | prunekit: zeroed units removed, max abs "
            "output change | torch-pruning 1.6.1: result (MACs kept) | time prunekit / torch-pruning (s) |",
            "|---|---|---|---|---|---|"]
    for r in d["rows"]:
        ex = "-" if r["ours_exact_max_abs"] is None else f"{r['ours_exact_max_abs']:.1e}"
        tp_s = "-" if r["tp_seconds"] != r["tp_seconds"] else f"{r['tp_seconds']:.3f}"
        rows.append(f"| {r['model']} | {r['target_macs']} | {cell(r['ours_ok'], r['ours_ratio'], r['ours_error'])} | "
                    f"{ex} | {cell(r['tp_ok'], r['tp_ratio'], r['tp_error'])} | {r['ours_seconds']:.3f} / {tp_s} |")
    n = len(d["rows"])
    rows.append(f"\nPasses: prunekit {sum(r['ours_ok'] for r in d['rows'])}/{n}, torch-pruning "
                f"{sum(r['tp_ok'] for r in d['rows'])}/{n}.")
    return "\n".join(rows)


def latency(d: dict) -> str:
    rows = ["| model | variant | MACs kept | median ms | speedup | ideal (MACs) | speedup / ideal | same, from "
            "fastest repeats |", "|---|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        if "error" in r:
            rows.append(f"| {r['model']} | {r['variant']} | **fail**: {r['error']} | | | | | |")
            continue
        rows.append(f"| {r['model']} | {r['variant']} | {r['macs_ratio']:.3f} | {r['median_ms']:.1f} | "
                    f"{r['speedup']:.2f} | {r['ideal']:.2f} | {r['efficiency']:.2f} | {r['efficiency_min']:.2f} |")
    return "\n".join(rows)


def minilm(d: dict) -> str:
    rows = ["| variant | layers, heads / MLP per layer | MACs kept | cosine to dense (mean / min) | Spearman of pair "
            "similarities | time (s) |", "|---|---|---|---|---|---|"]
    for r in d["rows"]:
        if "error" in r:
            rows.append(f"| {r['variant']} | **fail**: {r['error']} | | | | {r['seconds']:.2f} |")
            continue
        w = f"{r.get('layers', 6)}, {r['heads']} / {r['mlp']}" if "heads" in r else "-"
        rows.append(f"| {r['variant']} | {w} | {r.get('macs_ratio', float('nan')):.3f} | {r['cosine_mean']:.3f} / "
                    f"{r['cosine_min']:.3f} | {r['similarity_spearman']:.3f} | {r['seconds']:.2f} |")
    return "\n".join(rows)


def accuracy(d: dict) -> str:
    s = d["summary"]
    rows = [f"{d['model']} on {d['dataset']}, {len(d['rows'])} seeds, fine-tuning {d['ft_epochs']} epochs "
            "(mean ± std of test accuracy):", "", "| | dense | right after removal | after fine-tuning | MACs kept |",
            "|---|---|---|---|---|"]
    for label in ("prunekit", "torch-pruning", "prunekit_depth_first"):
        if label + "_removed" not in s:
            continue
        rows.append(f"| {label} | {s['dense'][0]:.4f} ± {s['dense'][1]:.4f} | {s[label + '_removed'][0]:.4f} ± "
                    f"{s[label + '_removed'][1]:.4f} | {s[label + '_finetuned'][0]:.4f} ± "
                    f"{s[label + '_finetuned'][1]:.4f} | {s[label + '_macs_ratio'][0]:.3f} |")
    return "\n".join(rows)


def main() -> None:
    for name, fn in (("structured_coverage.json", coverage), ("structured_latency_c.json", latency),
                     ("structured_latency_d.json", latency), ("structured_minilm.json", minilm),
                     ("structured_accuracy_cnn1d.json", accuracy), ("structured_accuracy_resnet20.json", accuracy)):
        d = _load(name)
        if d is not None:
            print(f"### {name}\n\nMachine: {d['machine']}\n\n{fn(d)}\n")


if __name__ == "__main__":
    main()
