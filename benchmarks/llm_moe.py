"""Expert removal on a small Mixtral trained on the built-in corpus: REAP vs frequency vs random, half the experts.

    PRUNEKIT_CACHE=/work/cache-prunekit nice -n 10 PYTHONPATH=src .venv/bin/python benchmarks/llm_moe.py \
        [--steps 300] [--out FILE.md]

Trains a seeded Mixtral (8 experts, top-2, with Mixtral's load-balancing loss) on the train split of
the standard-library docstring corpus with the zoo LM's tokenizer (trained here if the zoo LM is not
cached) and training loop (``zoo.lm._train``), then removes half of each layer's experts by REAP
saliency, routing frequency, or at random (3 seeds), from router statistics of calibration windows
of the train split, and reports validation perplexity (non-overlapping windows). Each removed model
is saved and reloaded with plain ``AutoModelForCausalLM`` before it is evaluated.
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


def build(vocab: int, a: argparse.Namespace) -> Any:
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(vocab_size=vocab, hidden_size=a.hidden, intermediate_size=a.expert_size,
                        num_hidden_layers=a.layers, num_attention_heads=4, num_key_value_heads=4,
                        num_local_experts=a.experts, num_experts_per_tok=2, max_position_embeddings=256,
                        output_router_logits=True, router_aux_loss_coef=0.02, tie_word_embeddings=False,
                        bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    return MixtralForCausalLM(cfg)


def tokenizer(train_docs: list[str]) -> Any:
    from transformers import AutoTokenizer

    from prunekit.zoo.lm import lm_dir, train_tokenizer

    d = lm_dir()
    if (d / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(d, local_files_only=True)
    return train_tokenizer(train_docs, 2048)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--max-minutes", type=float, default=6.0)
    ap.add_argument("--hidden", type=int, default=96)
    ap.add_argument("--expert-size", type=int, default=192)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--max-windows", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    from prunekit.calibrate.data import calibration_data, tokenize_stream
    from prunekit.calibrate.evaluate import perplexity
    from prunekit.calibrate.moe import remove_experts_dir
    from prunekit.zoo.lm import LMRecipe, _train
    from prunekit.zoo.text import stdlib_corpus, train_val_split

    t0 = time.perf_counter()
    train_docs, val_docs = train_val_split(stdlib_corpus())
    tok = tokenizer(train_docs)
    stream, val = tokenize_stream(train_docs, tok), tokenize_stream(val_docs, tok)
    model = build(len(tok), a)
    recipe = LMRecipe(steps=a.steps, seq_len=a.seq_len, batch_size=16, lr=3e-3, warmup=20, max_minutes=a.max_minutes)
    info = _train(model, stream, recipe)
    model.config.output_router_logits = False
    params = sum(p.numel() for p in model.parameters())
    ppl = lambda m: perplexity(m, val, a.seq_len, batch_size=16, max_windows=a.max_windows)["ppl"]  # noqa: E731
    dense = ppl(model)
    calib = calibration_data(tok, None, a.nsamples, a.seq_len, seed=0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "dense"
        model.save_pretrained(src)
        tok.save_pretrained(src)
        runs = [("reap", 0), ("frequency", 0), ("random", 0), ("random", 1), ("random", 2)]
        for score, seed in runs:
            out = Path(tmp) / f"{score}-{seed}"
            rep, _ = remove_experts_dir(src, out, a.keep, score, calibration=calib, seed=seed)
            from transformers import AutoModelForCausalLM

            reloaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
            kept = {k.split(".")[2]: v["kept"] for k, v in rep.layers.items()}
            rows.append((score, seed, ppl(reloaded), rep.params_after, kept))
            print(rows[-1], flush=True)
    rnd = [r[2] for r in rows if r[0] == "random"]
    lines = [f"Mixtral, {a.layers} blocks, hidden {a.hidden}, {a.experts} experts of {a.expert_size} (top-2), "
             f"{params / 1e6:.2f}M parameters, vocab {len(tok)}; trained {info['steps_done']} steps "
             f"(batch 16 x {a.seq_len}, {info['seconds']:.0f} s, final train loss {info['final_train_loss']:.3f}); "
             f"router statistics from {a.nsamples} x {a.seq_len} train-split windows; validation perplexity on "
             f"{a.max_windows} windows of {a.seq_len}; {a.threads} threads, load average "
             f"{os.getloadavg()[0]:.1f}; total {time.perf_counter() - t0:.0f} s.", "",
             "| model | experts / layer | parameters | val ppl | kept experts (layer: ids) |", "|---|---|---|---|---|",
             f"| dense | {a.experts} | {params} | {dense:.2f} | all |"]
    for score, seed, p, n, kept in rows:
        label = score if score != "random" else f"random (seed {seed})"
        lines.append(f"| {label} | {round(a.keep * a.experts)} | {n} | {p:.2f} | "
                     f"{'; '.join(f'{k}: {v}' for k, v in kept.items())} |")
    lines.append(f"| random, mean of 3 | | | {sum(rnd) / len(rnd):.2f} | |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        from prunekit.io import atomic_write_text

        atomic_write_text(Path(a.out), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
