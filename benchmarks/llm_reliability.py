"""What ``llm prune`` does to eight tiny random Hugging Face families: pruned, kept, reported vs counted.

For each family: save a seeded tiny model, run ``prunekit.calibrate.pipeline.prune_model_dir`` (what
``prunekit llm prune`` runs), then reload the output in plain transformers and count zeros in the saved
files. Writes a Markdown table (docs/results/llm_reliability.md).

Run:  .venv/bin/python benchmarks/llm_reliability.py --out docs/results/llm_reliability.md
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from prunekit.calibrate import SparseGPT, Wanda
from prunekit.calibrate.io import load_manifest
from prunekit.calibrate.pipeline import prune_model_dir
from prunekit.calibrate.verify import TensorReader
from prunekit.zoo.tiny_hf import FAMILIES, save_tiny_hf, tiny_ids


def one(name: str, method: str, root: Path) -> str:
    import transformers as T

    save_tiny_hf(name, root / "src")
    cfg = Wanda(0.5) if method == "wanda" else SparseGPT(pattern="2:4", blocksize=16)
    report, out = prune_model_dir(root / "src", root / "out", method, cfg, calibration=tiny_ids())
    reloaded = type(getattr(T, name).from_pretrained(out, local_files_only=True)).__name__
    man = load_manifest(out)
    t, summary = man["tensors"], man["ledger"]["summary"]
    with TensorReader(out) as r:  # counted here again, independently of the manifest's check
        zeros = sum(int((r.get(k) == 0).sum()) for k in t["pruned"])
        numel = sum(r.get(k).numel() for k in t["pruned"])
    kept = ", ".join(f"{k} {v['tensors']}" for k, v in summary["kept"].items())
    fallbacks = sum(len(v) for v in man["expert_fallbacks"].values())
    return (f"| {name} | {reloaded} | {' + '.join(man['stacks'])} | {len(t['pruned'])} | {len(t['kept_identical'])} "
            f"| {kept} | {man['sparsity']:.4f} | {zeros / numel:.4f} | {summary['sparsity_all_weights']:.4f} "
            f"| {fallbacks} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="wanda", choices=["wanda", "sparsegpt"])
    ap.add_argument("--out", type=Path, default=None, help="Markdown file to write (default: print)")
    args = ap.parse_args()
    target = "0.5 unstructured" if args.method == "wanda" else "2:4"
    rows = [f"`llm prune` path, {args.method} {target}, tiny random models (hidden 32, 2 blocks per stack), "
            "6 x 16 calibration tokens. Tensors are counted as saved (transformers may write fused experts "
            "per expert); the kept column counts parameters of the in-memory model per rule (ledger).", "",
            "| model | reloads as | stacks pruned | tensors pruned (files) | bit-identical (files) | kept by rule "
            "| reported sparsity | zeros counted in files | all weight matrices | expert fallbacks |",
            "|---|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for name in FAMILIES:
        with tempfile.TemporaryDirectory() as d:
            rows.append(one(name, args.method, Path(d)))
    text = "\n".join(rows) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
