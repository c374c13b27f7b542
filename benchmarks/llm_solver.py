"""ALPS vs SparseGPT at 70% (and 2:4): zoo LM perplexity and MiniLM embedding fidelity, with wall time.

    PRUNEKIT_CACHE=/work/cache-prunekit nice -n 10 python benchmarks/llm_solver.py --model zoo-lm \
        --out docs/results/llm_solver_zoo.json
    nice -n 10 python benchmarks/llm_solver.py --model minilm --out docs/results/llm_solver_minilm.json

Same protocol as ``benchmarks/llm_quality.py`` (whose loaders and evaluators it reuses): 64 calibration
windows of 128 tokens from the corpus's train split (seed 0), identical for both solvers, one process,
solvers interleaved; perplexity on every 128-token validation window (zoo LM) or mean cosine of
mean-pooled embeddings to the dense model on 512 validation docstrings (MiniLM).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

RUNS = [("SparseGPT", "sparsegpt", {"sparsity": 0.7}), ("ALPS", "alps", {"sparsity": 0.7}),
        ("SparseGPT", "sparsegpt", {"pattern": "2:4"}), ("ALPS", "alps", {"pattern": "2:4"})]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["zoo-lm", "minilm"], required=True)
    ap.add_argument("--runs", default="0,1", help="indices into RUNS (default: the 70%% pair)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(2)
    from llm_quality import load, make_eval

    from prunekit.calibrate import prune_blocks
    from prunekit.calibrate.config import SparseGPT
    from prunekit.calibrate.data import calibration_data
    from prunekit.calibrate.methods import ALPS

    _, tok = load(a.model)
    calib = calibration_data(tok, None, 64, 128, seed=0)
    evaluate = make_eval(a.model, tok, 128, 512)
    dense, _ = load(a.model)
    metric, base, proto = evaluate(dense)
    rows = [{"label": "dense", "metric": metric, "value": base}]
    for i in (int(x) for x in a.runs.split(",")):
        label, solver, kw = RUNS[i]
        model, _ = load(a.model)
        cfg = (ALPS if solver == "alps" else SparseGPT)(**kw)
        t0 = time.perf_counter()
        rep = prune_blocks(model, solver, cfg, calib)
        secs = time.perf_counter() - t0
        _, value, _ = evaluate(model)
        rows.append({"label": label, "solver": solver, **kw, "metric": metric, "value": value, "seconds": secs,
                     "sparsity": rep.sparsity, "load_avg": os.getloadavg()[0]})
        print(json.dumps(rows[-1]))
    Path(a.out).write_text(json.dumps({"model": a.model, "protocol": proto, "rows": rows,
                                       "command": " ".join(sys.argv)}, indent=1))


if __name__ == "__main__":
    main()
