"""Micro-benchmark: dense vs 2:4 semi-structured Linear on a CUDA GPU, by weight shape and batch.

    python benchmarks/llm_semi_structured.py [--dtype float16] [--backend cutlass|cusparselt] [--out FILE.md]

Prints (and with --out writes) a Markdown table: dense and 2:4 time per call (median of CUDA-event
timed repeats after warm-up) and their ratio; a ratio below 1 means 2:4 is slower. Exits with a
message and writes nothing when no capable GPU is present.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from torch.nn import functional as F

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (1024, 1024), (3072, 768), (768, 3072)]  # (out, in)
BATCHES = [1, 16, 128, 1024, 4096]


def time_call(fn, repeats: int = 50, warmup: int = 10) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` CUDA-event timed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def two_four(W: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest |w| of every 4 consecutive inputs."""
    g = W.reshape(W.shape[0], -1, 4)
    idx = g.abs().argsort(-1, descending=True)[..., :2]
    return (g * torch.zeros_like(g, dtype=torch.bool).scatter_(-1, idx, True)).reshape(W.shape)


def run(dtype: torch.dtype, backend: str) -> list[dict]:
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "cutlass"
    rows = []
    for out_f, in_f in SHAPES:
        W = two_four(torch.randn(out_f, in_f, device="cuda", dtype=dtype))
        Ws = to_sparse_semi_structured(W)
        for b in BATCHES:
            x = torch.randn(b, in_f, device="cuda", dtype=dtype)
            try:
                sparse_ms = time_call(lambda: F.linear(x, Ws))  # noqa: B023
                ok = torch.allclose(F.linear(x, Ws), F.linear(x, W), rtol=1e-2, atol=1e-1)
            except RuntimeError as e:  # shapes a kernel refuses
                sparse_ms, ok = float("nan"), f"error: {str(e)[:60]}"
            dense_ms = time_call(lambda: F.linear(x, W))  # noqa: B023
            rows.append({"out": out_f, "in": in_f, "batch": b, "dense_ms": dense_ms, "sparse_ms": sparse_ms,
                         "speedup": dense_ms / sparse_ms, "match": ok})
    return rows


def table(rows: list[dict], device: str, dtype: str, backend: str) -> str:
    lines = [f"GPU: {device}; dtype {dtype}; backend {backend}; torch {torch.__version__}", "",
             "| out x in | batch | dense ms | 2:4 ms | dense/2:4 | outputs match |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['out']}x{r['in']} | {r['batch']} | {r['dense_ms']:.4f} | {r['sparse_ms']:.4f} | "
                     f"{r['speedup']:.2f} | {r['match']} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    ap.add_argument("--backend", default="cutlass", choices=["cutlass", "cusparselt"])
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if not (torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8):
        print("no CUDA GPU with compute capability >= 8.0: nothing measured", file=sys.stderr)
        return 0
    md = table(run(getattr(torch, a.dtype), a.backend), torch.cuda.get_device_name(), a.dtype, a.backend)
    print(md)
    if a.out:
        with open(a.out, "w") as f:
            f.write(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
