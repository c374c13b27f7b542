"""prunekit vs llm-compressor, side by side in one run: same model, same calibration samples.

Runs in the separate benchmark environment that holds llmcompressor (it pins another transformers):

    python3 -m venv .bench-env-llm
    .bench-env-llm/bin/pip install torch==2.13.0 && .bench-env-llm/bin/pip install llmcompressor==0.14.0.1
    .bench-env-llm/bin/pip install --no-deps -e .
    nice -n 10 .bench-env-llm/bin/python benchmarks/llm_vs_llmcompressor.py [--model-dir DIR] [--out FILE.md]

For SparseGPT and Wanda at 50% unstructured and 2:4, each tool prunes a fresh copy of the model
(the zoo LM by default) with the same N x L calibration token windows; we report wall time of the
pruning call and perplexity under prunekit's pinned protocol (validation split of the built-in
corpus, non-overlapping windows). A case llm-compressor cannot run is recorded with its error.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

CASES = [("sparsegpt", 0.5, "0:0"), ("sparsegpt", None, "2:4"), ("wanda", 0.5, "0:0"), ("wanda", None, "2:4")]


def ours(model: Any, method: str, sparsity: float | None, structure: str, ids: torch.Tensor) -> None:
    from prunekit.calibrate import SparseGPT, Wanda, prune_blocks

    pattern = "unstructured" if structure == "0:0" else structure
    cfg = (SparseGPT if method == "sparsegpt" else Wanda)(sparsity=sparsity, pattern=pattern, batch_size=16)
    prune_blocks(model, method, cfg, ids).masks.bake()


def theirs(model: Any, method: str, sparsity: float | None, structure: str, ids: torch.Tensor) -> None:
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    cls = SparseGPTModifier if method == "sparsegpt" else WandaPruningModifier
    mod = cls(sparsity=0.5 if sparsity is None else sparsity, mask_structure=structure, targets=["Linear"],
              ignore=["re:.*lm_head"])  # its names end in "lm_head." so a plain "lm_head" does not match
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    oneshot(model=model, dataset=ds, recipe=[mod], num_calibration_samples=ids.shape[0],
            max_seq_length=ids.shape[1], shuffle_calibration_samples=False, pipeline="sequential")


def sparsity_of(model: Any) -> float:
    ws = [m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
    return 1.0 - sum(int((w != 0).sum()) for w in ws) / sum(w.numel() for w in ws)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default=None, help="default: the cached zoo LM")
    ap.add_argument("--nsamples", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 suits a shared machine)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    import transformers
    from transformers import AutoTokenizer, LlamaForCausalLM

    from prunekit.calibrate.data import builtin_texts, calibration_data, tokenize_stream
    from prunekit.calibrate.evaluate import perplexity
    from prunekit.zoo.lm import lm_dir

    d = Path(a.model_dir) if a.model_dir else lm_dir()
    tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
    fresh = lambda: LlamaForCausalLM.from_pretrained(d, local_files_only=True).eval()  # noqa: E731
    ids = calibration_data(tok, None, a.nsamples, a.seq_len, seed=0).input_ids
    val = tokenize_stream(builtin_texts("validation"), tok)
    ppl = lambda m: perplexity(m, val, a.seq_len, batch_size=16)  # noqa: E731
    dense = ppl(fresh())
    rows = []
    for method, s, structure in CASES:
        row: dict[str, Any] = {"method": method, "pattern": "50%" if structure == "0:0" else structure}
        for tool, fn in (("prunekit", ours), ("llmcompressor", theirs)):
            model = fresh()
            try:
                t0 = time.perf_counter()
                fn(model, method, s, structure, ids)
                row[f"{tool}_s"] = time.perf_counter() - t0
                row[f"{tool}_ppl"] = ppl(model)["ppl"]
                row[f"{tool}_sparsity"] = sparsity_of(model)
            except Exception as e:  # record why a case cannot run
                traceback.print_exc()
                row[f"{tool}_error"] = f"{type(e).__name__}: {str(e)[:120]}"
        rows.append(row)
        print(row, flush=True)
    md = table(a, rows, dense, ids, transformers.__version__)
    print(md)
    if a.out:
        Path(a.out).write_text(md + "\n")
    return 0


def table(a: Any, rows: list[dict], dense: dict, ids: torch.Tensor, tf_version: str) -> str:
    import llmcompressor

    cpu = subprocess.run(["bash", "-c", "lscpu | grep 'Model name'"], capture_output=True, text=True).stdout
    lines = [f"Command: `nice -n 10 .bench-env-llm/bin/python {' '.join(sys.argv)}`", "",
             f"Machine: {os.cpu_count()} CPU cores ({cpu.split(':')[-1].strip()}), {torch.get_num_threads()} torch "
             f"thread(s), torch {torch.__version__}, "
             f"transformers {tf_version}, llmcompressor {llmcompressor.__version__}; float32 on CPU, shared with "
             "other jobs. Same model, same calibration windows "
             f"({ids.shape[0]} x {ids.shape[1]} tokens), same perplexity protocol ({dense['protocol']}). "
             f"Dense perplexity {dense['ppl']:.3f}.", "",
             "| method | pattern | prunekit ppl | llmcompressor ppl | prunekit s | llmcompressor s | "
             "llmcompressor s / prunekit s | sparsity (ours / theirs) |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    def cell(r: dict, k: str, fmt: str = "{:.3f}") -> str:
        return fmt.format(r[k]) if k in r else r.get(k.split("_")[0] + "_error", "n/a")

    for r in rows:
        f = lambda k, fmt="{:.3f}": cell(r, k, fmt)  # noqa: E731, B023
        ratio = f"{r['llmcompressor_s'] / r['prunekit_s']:.2f}" if "llmcompressor_s" in r and "prunekit_s" in r \
            else "n/a"
        lines.append(f"| {r['method']} | {r['pattern']} | {f('prunekit_ppl')} | {f('llmcompressor_ppl')} | "
                     f"{f('prunekit_s', '{:.1f}')} | {f('llmcompressor_s', '{:.1f}')} | {ratio} | "
                     f"{f('prunekit_sparsity', '{:.4f}')} / {f('llmcompressor_sparsity', '{:.4f}')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
