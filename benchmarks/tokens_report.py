"""docs/results/tokens.md (and the hyperedge usage plot) from the JSON written by tokens_minilm.py / tokens_digits.py.

    python benchmarks/tokens_report.py --dir docs/results/tokens --out docs/results/tokens.md
"""

from __future__ import annotations

import argparse
import json
import statistics as st
from pathlib import Path

from prunekit.io import atomic_write_text


def _load(d: Path, name: str) -> dict | None:
    p = d / name
    return json.loads(p.read_text()) if p.is_file() else None


def _ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{st.mean(values):.3f} ± {st.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def _minilm(d: Path) -> dict | None:
    """Every ``minilm*.json`` merged: their rows, commands and the first file's machine line."""
    files = [json.loads(f.read_text()) for f in sorted(d.glob("minilm*.json"))]
    if not files:
        return None
    return {"meta": files[0]["meta"], "commands": [f["meta"]["command"] for f in files],
            "rows": [r for f in files for r in f["rows"]]}


def minilm(res: dict | None) -> list[str]:
    if res is None:
        return ["MiniLM: not measured (no minilm.json).", ""]
    out = [*(f"Command: `{c}`  " for c in res["commands"]), f"Machine: {res['meta']['machine']}.", "",
           "| seq | keep | method | fidelity | tokens kept | FLOPs ratio | speedup per timer run | bar |",
           "|---|---|---|---|---|---|---|---|"]
    for r in sorted(res["rows"], key=lambda r: (r["seq"], -r["keep"], r["method"])):
        sp = r["speedups"]
        bar = ""
        if r["seq"] == 256 and r["keep"] == 0.66 and r["method"] == "zero-tprune" and sp:
            med, above = st.median(sp), sum(s >= 1.3 for s in sp)
            ok = med >= 1.3 and r["fidelity"] >= 0.95
            bar = (f"{'met' if ok else '**missed**'} (median {med:.2f}x, {above} of {len(sp)} runs >= 1.3x; "
                   f"fidelity {r['fidelity']:.3f} {'>=' if r['fidelity'] >= 0.95 else '<'} 0.95)")
        out.append(f"| {r['seq']} | {r['keep']} | {r['method']} | {r['fidelity']:.4f} | {r['tokens_kept']:.3f} | "
                   f"{r['flops_ratio']:.3f} | {', '.join(f'{s:.2f}x' for s in sp) or 'not timed'} | {bar} |")
    out.append("")
    wins = []
    for (seq, keep) in sorted({(r["seq"], r["keep"]) for r in res["rows"]}):
        f = {r["method"]: r["fidelity"] for r in res["rows"] if r["seq"] == seq and r["keep"] == keep}
        if "zero-tprune" in f:
            beats = all(f["zero-tprune"] > f[m] for m in ("attention", "random") if m in f)
            wins.append(f"seq {seq} keep {keep}: {'yes' if beats else '**no**'}")
    out += ["Zero-TPrune's fidelity above attention's and random's at equal keep: " + "; ".join(wins) + ".", ""]
    return out


def vit(res: dict | None) -> list[str]:
    if res is None:
        return ["ViT on digits: not measured (no vit.json).", ""]
    runs = res.get("vit_runs", [])
    out = [f"Command: `{res['meta']['command']}`  ", f"Machine: {res['meta']['machine']}.", "",
           f"Plain zoo ViT (dense, no pruning), test accuracy over seeds {[r['seed'] for r in runs]}: "
           f"{_ms([r['accuracy'] for r in runs])}; MACs per image {runs[0]['macs_per_image'] if runs else 'n/a'}.",
           "", "Token pruning of a depth-4 zoo ViT (same width, seed 0, dense test accuracy "
           f"{res.get('vit_deep', {}).get('accuracy', float('nan')):.4f}), no fine-tuning (test accuracy, 449 "
           "images):", "",
           "| pruning layers | keep | method | accuracy | tokens kept | MACs ratio |", "|---|---|---|---|---|---|"]
    for r in res.get("vit_tokens", []):
        out.append(f"| {','.join(map(str, r['layers']))} | {r['keep']} | {r['method']} | {r['accuracy']:.4f} | "
                   f"{r['tokens_kept']:.3f} | {r['macs_ratio']:.3f} |")
    return out + [""]


def softhgnn(rows: list[dict], plain: list[dict], plot: str | None) -> list[str]:
    if not rows:
        return ["SoftHGNN: not measured (no hgnn_*.json).", ""]
    out = ["| model | k of 8 | load balancing | seeds | test accuracy | MACs per image | hyperedges never used "
           "(block 0, test set, mean over seeds) |", "|---|---|---|---|---|---|---|"]
    if plain:
        out.append(f"| vit (plain) | - | - | {len(plain)} | {_ms([r['accuracy'] for r in plain])} | "
                   f"{plain[0]['macs_per_image']} | - |")
    for k in sorted({r["k"] for r in rows}):
        for bal in (0.01, 0.0):
            g = [r for r in rows if r["k"] == k and r["balance"] == bal]
            if not g:
                continue
            unused = st.mean(sum(1 for u in r["usage_share"] if u == 0) for r in g)
            out.append(f"| vit-softhgnn | {k} | {'on (0.01)' if bal else 'off'} | {len(g)} | "
                       f"{_ms([r['accuracy'] for r in g])} | {g[0]['macs_per_image']} | {unused:.1f} |")
    out.append("")
    if plot:
        out += [f"![hyperedge usage]({plot})", "",
                "Usage plot: hyperedges chosen by each of the first 40 test images (block 0, seed 0, k = 4), "
                "with and without the load-balancing loss, and each hyperedge's share of the test set.", ""]
    return out


def usage_plot(rows: list[dict], path: Path) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pick = {bal: next((r for r in rows if r["k"] == 4 and r["seed"] == 0 and r["balance"] == bal), None)
            for bal in (0.01, 0.0)}
    if not all(pick.values()):
        return None
    fig, axes = plt.subplots(2, 2, figsize=(9, 5), gridspec_kw={"height_ratios": [3, 1]})
    for j, (bal, r) in enumerate(pick.items()):
        axes[0, j].imshow(np.array(r["usage_first"]).T, aspect="auto", cmap="Greys", interpolation="nearest")
        axes[0, j].set_title(f"k=4, load balancing {'on' if bal else 'off'}")
        axes[0, j].set_xlabel("test image")
        axes[0, j].set_ylabel("hyperedge")
        axes[1, j].bar(range(len(r["usage_share"])), r["usage_share"])
        axes[1, j].set_ylabel("share of images")
        axes[1, j].set_xlabel("hyperedge")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path.name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=Path("docs/results/tokens"))
    p.add_argument("--out", type=Path, default=Path("docs/results/tokens.md"))
    p.add_argument("--intro", type=Path, default=None, help="Markdown put before the tables")
    args = p.parse_args()
    rows = [r for f in sorted(args.dir.glob("hgnn_*.json")) for r in json.loads(f.read_text())["softhgnn"]]
    v = _load(args.dir, "vit.json")
    plot = usage_plot(rows, args.dir / "usage.png") if rows else None
    cmds = sorted({json.loads(f.read_text())["meta"]["command"] for f in args.dir.glob("hgnn_*.json")})
    text = [args.intro.read_text() if args.intro else "# Token pruning and soft hyperedges", "",
            "## MiniLM (all-MiniLM-L6-v2) on the built-in corpus", "", *minilm(_minilm(args.dir)),
            "## Zoo ViT on digits: accuracy vs keep", "", *vit(v),
            "## SoftHGNN on digits", "", *(f"Command: `{c}`  " for c in cmds), "",
            *softhgnn(rows, (v or {}).get("vit_runs", []), f"tokens/{plot}" if plot else None)]
    atomic_write_text(args.out, "\n".join(text) + "\n")


if __name__ == "__main__":
    main()
