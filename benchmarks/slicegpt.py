"""SliceGPT vs the approximate ``prune_normalized`` removal of the hidden width, on the trained zoo LM.

    PRUNEKIT_CACHE=/work/cache-prunekit nice -n 10 .venv/bin/python benchmarks/slicegpt.py \
        --out docs/results/slicegpt.json

For each fraction of the hidden width (10 / 25 / 30%): ``prunekit.structured.slice_`` (fold the norms,
rotate each block onto the principal directions of its calibration signal, keep the first directions),
the same with one rotation for the whole stream (``shortcuts=False``: no shortcut matrices, a plain
transformers folder), and, at the same kept width, the hidden (norm-mixed) group removed as
``prune_normalized=True`` does it (l2 group importance, the norm statistics recomputed over the kept
channels; heads and MLP untouched).
Measured: validation perplexity (``prunekit.calibrate.evaluate.perplexity``, 128-token non-overlapping
windows of the corpus's validation split, the protocol of docs/results/llm.md), parameters and MACs of one
128-token sequence (``prunekit.accounting.count_macs``, which counts the shortcut matmuls too), and the
relative logit error on 8 validation windows. Calibration: 64 windows x 128 tokens of the train split,
seed 0. Exactness: the norm fold alone and the rotation without slicing (fraction 0) against the dense
logits, on the zoo LM (float32 and float64) and on tiny random LLaMA / OPT models (float64).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from typing import Any

import torch


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.double()


def measure(model: torch.nn.Module, val: torch.Tensor, probe: torch.Tensor, dense_logits: torch.Tensor | None,
            seconds: float) -> dict[str, Any]:
    """Perplexity, parameters, MACs of one 128-token sequence, relative logit error."""
    from prunekit.accounting import count_macs
    from prunekit.calibrate.evaluate import perplexity

    ppl = perplexity(model, val, seq_len=128, batch_size=16, dataset="stdlib-docstrings", tokenizer="zoo-lm BPE")
    row = {"ppl": round(ppl["ppl"], 4), "protocol_hash": ppl["protocol"]["hash"],
           "windows": ppl["protocol"]["n_windows"],
           "params": sum(p.numel() for p in model.parameters()),
           "macs": int(count_macs(model, {"input_ids": probe[:1]})), "seconds": round(seconds, 2)}
    if dense_logits is not None:
        row["rel_logit_error"] = round(_rel(_logits(model, probe), dense_logits), 5)
    return row


def normalized_removal(model: torch.nn.Module, width: int, probe: torch.Tensor) -> torch.nn.Module:
    """A copy with the hidden group cut to ``width`` channels by l2 importance, as ``prune_normalized=True`` does."""
    from prunekit.structured import build_graph, group_scores, remove_units_

    slim, x = copy.deepcopy(model), {"input_ids": probe[:1, :32]}
    graph = build_graph(slim, x)
    hidden = next(g for g in graph.groups(include_inexact=True)
                  if g.inexact is not None and any(m.name.endswith("embed_tokens.weight") for m in g.members))
    score = group_scores(slim, graph, [hidden], "l2", "mean", 0, x)[hidden.id]
    keep = torch.sort(torch.topk(score, width).indices).values
    remove_units_(slim, x, graph, {hidden.id: keep})
    return slim


def exactness_zoo(model: torch.nn.Module, calib: torch.Tensor, probe: torch.Tensor) -> dict[str, Any]:
    """Norm fold alone and rotation without slicing on the zoo LM, float32 and float64."""
    from prunekit.structured import fold_norms_, slice_

    out = {}
    for dtype in (torch.float32, torch.float64):
        base = copy.deepcopy(model).to(dtype)
        dense = _logits(base, probe)
        folded = copy.deepcopy(base)
        fold_norms_(folded)
        rotated = copy.deepcopy(base)
        slice_(rotated, calib, 0.0)
        name = str(dtype).replace("torch.", "")
        for what, m in (("fold", folded), ("rotation", rotated)):
            got = _logits(m, probe)
            out[f"zoo_{what}_{name}"] = {"max_abs": float((got - dense).abs().max()), "rel": _rel(got, dense),
                                         "max_abs_dense": float(dense.abs().max())}
    return out


def exactness_tiny() -> dict[str, Any]:
    """Rotation only (float64) and the LayerNorm -> RMSNorm fold (float32) on tiny random LLaMA and OPT."""
    import transformers as T

    from prunekit.structured import fold_norms_, slice_

    small = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)
    cfgs = {"llama": T.LlamaConfig(**small, intermediate_size=64, num_key_value_heads=2),
            "opt": T.OPTConfig(**small, ffn_dim=64, word_embed_proj_dim=32)}
    ids = torch.randint(3, 96, (8, 16), generator=torch.Generator().manual_seed(0))
    x = torch.randint(3, 96, (2, 16), generator=torch.Generator().manual_seed(1))
    out = {}
    for kind, cfg in cfgs.items():
        torch.manual_seed(0)
        m = T.AutoModelForCausalLM.from_config(cfg).eval()
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "norm" in n:
                    p.add_(0.3 * torch.randn_like(p))
        f = copy.deepcopy(m)
        fold_norms_(f)
        out[f"tiny_{kind}_fold_float32_max_abs"] = float((_logits(f, x) - _logits(m, x)).abs().max())
        d = copy.deepcopy(m).double()
        r = copy.deepcopy(d)
        slice_(r, ids, 0.0)
        out[f"tiny_{kind}_rotation_float64_max_abs"] = float((_logits(r, x) - _logits(d, x)).abs().max())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fractions", default="0.1,0.25,0.3")
    ap.add_argument("--nsamples", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="JSON file for the rows")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    from prunekit.calibrate.data import builtin_texts, calibration_data, tokenize_stream
    from prunekit.calibrate.evaluate import windows
    from prunekit.structured import slice_
    from prunekit.zoo.lm import load_zoo_lm

    model, tok, record = load_zoo_lm()
    val = tokenize_stream(builtin_texts("validation"), tok)
    probe = windows(val, 128, 8)  # (8, 128) first validation windows
    calib = calibration_data(tok, None, a.nsamples, 128, 0).input_ids
    dense_logits = _logits(model, probe)
    rows: list[dict[str, Any]] = [{"method": "dense", "fraction": 0.0, "hidden": model.config.hidden_size,
                                   **measure(model, val, probe, None, 0.0)}]
    print(rows[-1], flush=True)
    for frac in [float(f) for f in a.fractions.split(",")]:
        sliced, t0 = copy.deepcopy(model), time.perf_counter()
        rep = slice_(sliced, calib, frac)
        rows.append({"method": "slicegpt", "fraction": frac, "hidden": rep.hidden_after,
                     "min_kept_variance": round(min(rep.kept_variance.values()), 4),
                     **measure(sliced, val, probe, dense_logits, time.perf_counter() - t0)})
        print(rows[-1], flush=True)
        one, t0 = copy.deepcopy(model), time.perf_counter()
        rep1 = slice_(one, calib, frac, shortcuts=False)
        rows.append({"method": "slicegpt one rotation", "fraction": frac, "hidden": rep1.hidden_after,
                     "min_kept_variance": round(min(rep1.kept_variance.values()), 4),
                     **measure(one, val, probe, dense_logits, time.perf_counter() - t0)})
        print(rows[-1], flush=True)
        t0 = time.perf_counter()
        slim = normalized_removal(model, rep.hidden_after, probe)
        rows.append({"method": "prune_normalized", "fraction": frac, "hidden": rep.hidden_after,
                     **measure(slim, val, probe, dense_logits, time.perf_counter() - t0)})
        print(rows[-1], flush=True)
    exact = {**exactness_zoo(model, calib, probe), **exactness_tiny()}
    print(json.dumps(exact, indent=1))
    result = {"rows": rows, "exactness": exact, "zoo_lm_val_ppl_recorded": record.get("val_ppl"),
              "calibration": {"nsamples": a.nsamples, "seq_len": 128, "seed": 0, "split": "train"},
              "machine": f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, torch "
                         f"{torch.__version__}, {a.threads} thread(s)"}
    if a.out:
        from prunekit.io import write_json

        write_json(a.out, result)
    print(table(rows))


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of docs/results/structured.md."""
    dense = rows[0]
    out = ["| method | hidden removed | hidden | val ppl | params (vs dense) | MACs / 128 tokens (vs dense) | "
           "rel. logit error |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        err = "" if "rel_logit_error" not in r else f"{r['rel_logit_error']:.4f}"
        out.append(f"| {r['method']} | {r['fraction']:.0%} | {r['hidden']} | {r['ppl']:.2f} | {r['params']:,} "
                   f"({r['params'] / dense['params']:.3f}) | {r['macs']:,} ({r['macs'] / dense['macs']:.3f}) | {err} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
