"""Pruning + weight-only quantization on the zoo LM: perplexity and bytes on disk.

    PRUNEKIT_CACHE=/work/cache-prunekit nice -n 10 PYTHONPATH=src .venv/bin/python benchmarks/llm_quant.py \
        [--group 128] [--out FILE.md]

Dense fp32, SparseGPT 50% unstructured and 2:4 (fp32), then int8 / int4 group-wise RTN
(``prunekit.quant``, zeros kept as the mask, sparse weights stored as bitmask + kept codes) of the
dense and of both pruned models. Every variant is written to disk (``save_pretrained`` or
``save_quantized``) and reloaded from there (``load_quantized`` for the quantized ones) before its
validation perplexity is measured; bytes are those of the weights file. Embeddings, norms and
the LM head stay fp32 in every variant.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def linear_bytes(path: Path, man: dict[str, Any]) -> int:
    """Bytes of the stored codes, bitmasks, scales and zero points of the quantized weights (from the file)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(path), "pt") as f:
        for name in man["quantized"]:
            for part in ("q", "scale", "zero", "mask"):
                if f"{name}.{part}" in f.keys():
                    t = f.get_tensor(f"{name}.{part}")
                    total += t.numel() * t.element_size()
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--max-windows", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    from transformers import LlamaForCausalLM

    from prunekit.calibrate import SparseGPT, prune_blocks
    from prunekit.calibrate.data import builtin_texts, calibration_data, tokenize_stream
    from prunekit.calibrate.evaluate import perplexity
    from prunekit.quant import load_quantized, save_quantized
    from prunekit.quant.format import WEIGHTS, linear_weights
    from prunekit.zoo.lm import lm_dir, load_zoo_lm

    t0 = time.perf_counter()
    dense, tok, record = load_zoo_lm()
    val = tokenize_stream(builtin_texts("validation"), tok)
    calib = calibration_data(tok, None, a.nsamples, a.seq_len, seed=0)
    ppl = lambda m: perplexity(m, val, a.seq_len, batch_size=16, max_windows=a.max_windows)["ppl"]  # noqa: E731
    fresh = lambda: LlamaForCausalLM.from_pretrained(lm_dir(), local_files_only=True).eval()  # noqa: E731
    pruned: dict[str, Any] = {"dense": dense}
    for label, cfg in (("50%", SparseGPT(0.5, batch_size=16)), ("2:4", SparseGPT(pattern="2:4", batch_size=16))):
        m = fresh()
        prune_blocks(m, "sparsegpt", cfg, calib).masks.bake()
        pruned[label] = m
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, m in pruned.items():
            d = Path(tmp) / f"{label.replace(':', '-').replace('%', 'pct')}-fp32"
            m.save_pretrained(d)
            back = LlamaForCausalLM.from_pretrained(d, local_files_only=True).eval()
            n_linear = sum(p.numel() for n, p in m.named_parameters() if n in linear_weights(m))
            rows.append((label, "fp32", ppl(back), (d / "model.safetensors").stat().st_size, None, 4 * n_linear))
            print(rows[-1], flush=True)
            for bits in (8, 4):
                q = d.with_name(d.name.replace("fp32", f"int{bits}"))
                _, man = save_quantized(m, q, bits, a.group)
                sparse = sum(e["sparse"] for e in man["quantized"].values())
                rows.append((label, f"int{bits}", ppl(load_quantized(q)), (q / WEIGHTS).stat().st_size, sparse,
                             linear_bytes(q / WEIGHTS, man)))
                print(rows[-1], flush=True)
    base = rows[0][3]
    lines = [f"Zoo LM ({sum(p.numel() for p in dense.parameters()) / 1e6:.2f}M parameters, trained "
             f"{record['train']['steps_done']} steps); SparseGPT calibration {a.nsamples} x {a.seq_len} train-split "
             f"windows; RTN group {a.group} (asymmetric min-max, range of the kept weights); validation perplexity "
             f"on {a.max_windows} windows of {a.seq_len}; embeddings and LM head fp32 throughout; {a.threads} thread, "
             f"load average {os.getloadavg()[0]:.1f}; total {time.perf_counter() - t0:.0f} s.", "",
             "| pruning | weights | val ppl | bytes on disk (weights file) | vs dense fp32 | bytes of the Linear "
             "weights | vs fp32 | Linear stored sparse |", "|---|---|---|---|---|---|---|---|"]
    lin = rows[0][5]
    for label, w, p, n, sparse, nl in rows:
        lines.append(f"| {label} | {w} | {p:.2f} | {n:,} | {n / base:.3f} | {nl:,} | {nl / lin:.3f} | "
                     f"{'-' if sparse is None else sparse} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        from prunekit.io import atomic_write_text

        atomic_write_text(Path(a.out), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
