"""prunekit vs llm-compressor END TO END: each tool a fresh process, saved folder -> saved pruned folder.

    nice -n 10 .bench-env-llm/bin/python benchmarks/llm_vs_llmcompressor_e2e.py --model-dir DIR|minilm \
        [--nsamples 32] [--seq-len 128] [--repeats 2] [--batch-size 16] [--out FILE.md]

Runs in the benchmark environment that holds llmcompressor (see ``llm_vs_llmcompressor.py``). For every case
(SparseGPT / Wanda at 50% and 2:4), interleaved and alternating which tool goes first, it times the whole
process, start-up included: ``prunekit prune DIR --method M ... --out D`` (the CLI draws its calibration
windows from the built-in corpus) against ``benchmarks/llmc_oneshot.py`` (a minimal ``oneshot`` script fed
the very same token ids from a ``.npy`` file, so it does no tokenizing at all). One torch thread each
(``--threads 1`` / ``torch.set_num_threads(1)``, ``OMP_NUM_THREADS=1``). Both saved folders are then read
back: masks (zero pattern of every pruned Linear weight) compared, and the relative difference of the
pruned weights. prunekit's one-time cost of building its corpus cache (first run on a machine) is timed
separately and reported; the timed runs find it warm.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

CASES = [("sparsegpt", 0.5, "0:0"), ("sparsegpt", None, "2:4"), ("wanda", 0.5, "0:0"), ("wanda", None, "2:4")]
HERE = Path(__file__).resolve().parent


def cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: list[str], env: dict[str, str], log: Path) -> dict[str, float]:
    """Run ``cmd``; its wall and CPU seconds (a failure raises with the log's tail)."""
    c0, t0 = cpu_children(), time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    out = {"s": time.perf_counter() - t0, "cpu": cpu_children() - c0}
    if rc != 0:
        raise RuntimeError(f"{cmd[:3]} failed (rc {rc}):\n{log.read_text()[-3000:]}")
    return out


def ours_cmd(d: Path, out: Path, method: str, s: float | None, structure: str, a: Any) -> list[str]:
    cmd = [str(Path(sys.executable).parent / "prunekit"), "prune", str(d), "--method", method, "--nsamples",
           str(a.nsamples), "--seq-len", str(a.seq_len), "--batch-size", str(a.batch_size), "--threads", "1",
           "--out", str(out),
           "--attn-implementation", "eager"]  # the attention llm-compressor runs (its results equal HF eager's)
    return cmd + (["--pattern", structure] if structure != "0:0" else ["--sparsity", str(s)])


def theirs_cmd(d: Path, ids: Path, out: Path, method: str, s: float | None, structure: str) -> list[str]:
    return [sys.executable, str(HERE / "llmc_oneshot.py"), str(d), str(ids), str(out), "--method", method,
            "--structure", structure, "--sparsity", str(0.5 if s is None else s)]


def block_weights(folder: Path) -> dict[str, Any]:
    """The pruned Linear weights of a saved folder (every 2-D weight but embeddings, head and pooler)."""
    from safetensors.torch import load_file

    w = load_file(str(folder / "model.safetensors"))
    return {k: v for k, v in w.items() if v.dim() == 2 and k.endswith(".weight") and "embed" not in k
            and "lm_head" not in k and "pooler" not in k and "embeddings" not in k}


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    strip = lambda k: k.removeprefix("model.")  # noqa: E731  BertModel folders may differ in prefix
    a, b = {strip(k): v for k, v in a.items()}, {strip(k): v for k, v in b.items()}
    if a.keys() != b.keys():
        return {"compare_error": f"different tensors: {sorted(a.keys() ^ b.keys())[:4]}"}
    diff = sum(int(((a[k] != 0) != (b[k] != 0)).sum()) for k in a)
    total = sum(a[k].numel() for k in a)
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a)
    den = sum(float(b[k].double().pow(2).sum()) for k in a)
    zeros = lambda w: sum(int((t == 0).sum()) for t in w.values()) / total  # noqa: E731
    return {"masks_identical": diff == 0, "mask_diff": diff / total, "weight_rel_diff": (num / den) ** 0.5,
            "sparsity": f"{zeros(a):.4f} / {zeros(b):.4f}"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", required=True, help="a save_pretrained folder or 'minilm'")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16, help="prunekit's --batch-size (llm-compressor: 1)")
    ap.add_argument("--cases", default=None, help="comma-separated case indices (default: all 4)")
    ap.add_argument("--workdir", default="/tmp/prunekit-e2e")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from llm_vs_llmcompressor import in_llmc_order, param_count, resolve
    from transformers import AutoTokenizer

    from prunekit.calibrate.data import calibration_data

    d = resolve(a.model_dir)
    work = Path(a.workdir)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PRUNEKIT_CACHE": str(work / "cache"), "TQDM_DISABLE": "1"}
    os.environ["PRUNEKIT_CACHE"] = env["PRUNEKIT_CACHE"]
    warm = timed([sys.executable, "-c", "from prunekit.calibrate.data import builtin_texts; builtin_texts()"],
                 env, work / "warm.log")  # prunekit's one-time corpus cache (a fresh PRUNEKIT_CACHE)
    ids = calibration_data(AutoTokenizer.from_pretrained(d, local_files_only=True), None, a.nsamples, a.seq_len,
                           seed=0).input_ids
    ids_file = work / "ids.npy"
    np.save(ids_file, in_llmc_order(ids.numpy()))
    sha = hashlib.sha256(ids.numpy().tobytes()).hexdigest()[:16]
    cases = [CASES[int(i)] for i in a.cases.split(",")] if a.cases else CASES
    rows = []
    for r in range(a.repeats):
        for ci, (method, s, structure) in enumerate(cases):
            order = ("prunekit", "llmcompressor") if (r + ci) % 2 == 0 else ("llmcompressor", "prunekit")
            row: dict[str, Any] = {"method": method, "pattern": "50%" if structure == "0:0" else structure,
                                   "repeat": r + 1, "first": order[0]}
            outs = {}
            for tool in order:
                out = work / f"{tool}-{method}-{structure.replace(':', '')}-{r}"
                cmd = ours_cmd(d, out, method, s, structure, a) if tool == "prunekit" else \
                    theirs_cmd(d, ids_file, out, method, s, structure)
                res = timed(cmd, env, work / f"{out.name}.log")
                row[f"{tool}_s"], row[f"{tool}_cpu"] = res["s"], res["cpu"]
                outs[tool] = out
            from prunekit.io import read_manifest

            row["same_ids"] = read_manifest(outs["prunekit"])["calibration"]["sha256_16"] == sha
            row.update(compare(block_weights(outs["prunekit"]), block_weights(outs["llmcompressor"])))
            for out in outs.values():
                shutil.rmtree(out)
            rows.append(row)
            print(row, flush=True)
    md = table(a, d, param_count(d), rows, warm, ids)
    print(md)
    if a.out:
        Path(a.out).write_text(md + "\n")
    return 0


def table(a: Any, d: Path, n: int, rows: list[dict], warm: dict, ids: Any) -> str:
    import llmcompressor
    import torch
    import transformers

    cpu = subprocess.run(["bash", "-c", "lscpu | grep 'Model name'"], capture_output=True, text=True).stdout
    lines = [f"Command: `nice -n 10 .bench-env-llm/bin/python {' '.join(sys.argv)}`", "",
             f"Model {d.name} ({n / 1e6:.1f}M parameters); {ids.shape[0]} x {ids.shape[1]} calibration tokens. "
             f"Machine: {os.cpu_count()} CPU cores ({cpu.split(':')[-1].strip()}), load average at the end "
             f"{os.getloadavg()[0]:.1f}; torch {torch.__version__}, transformers {transformers.__version__}, "
             f"llmcompressor {llmcompressor.__version__}. prunekit's one-time corpus cache build: "
             f"{warm['s']:.1f} s wall ({warm['cpu']:.1f} s CPU), not in the rows below.", "",
             "| method | pattern | run | first | prunekit s | llmcompressor s | llmcompressor s / prunekit s | "
             "prunekit CPU s | llmcompressor CPU s | CPU ratio | same ids | masks identical | "
             "mask entries differing | weight rel. diff | sparsity (ours / theirs) |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['pattern']} | {r['repeat']} | {r['first']} | {r['prunekit_s']:.1f} | "
                     f"{r['llmcompressor_s']:.1f} | {r['llmcompressor_s'] / r['prunekit_s']:.2f} | "
                     f"{r['prunekit_cpu']:.1f} | {r['llmcompressor_cpu']:.1f} | "
                     f"{r['llmcompressor_cpu'] / r['prunekit_cpu']:.2f} | {'yes' if r['same_ids'] else 'no'} | "
                     f"{'yes' if r.get('masks_identical') else 'no'} | {r.get('mask_diff', float('nan')):.2e} | "
                     f"{r.get('weight_rel_diff', float('nan')):.2e} | {r.get('sparsity', r.get('compare_error'))} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
