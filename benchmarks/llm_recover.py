"""Recovery after 70% SparseGPT on the zoo LM: PERP, PERP + row scales, masked LoRA, distillation.

    PRUNEKIT_CACHE=/work/cache-prunekit nice -n 10 python benchmarks/llm_recover.py --method perp \
        --work /tmp/llm_recover --out docs/results/llm_recover.json

One method per run; results go to ``<out stem>_<method>.json`` beside ``--out`` and to the SQLite
store ``--db``. The pruned folder (SparseGPT 70%, 64 calibration windows of
128 tokens from the corpus's train split, seed 0) is made once in ``--work`` and reused. Training: the
corpus's train split, ``--steps`` AdamW steps of 8 x 128 tokens (wall and CPU seconds reported);
perplexity on the first ``--max-windows`` 128-token non-overlapping windows of the validation split for
dense, pruned and recovered.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

SETTINGS = {"perp": dict(method="perp", lr=5e-3), "perp-scale": dict(method="perp", lr=5e-3, linear_scale=True),
            "perp-scale2": dict(method="perp", lr=5e-3, linear_scale=True, column_scale=True),
            "perp-bias": dict(method="perp", lr=5e-3, add_bias=True),
            "perp-bias-scale2": dict(method="perp", lr=5e-3, add_bias=True, linear_scale=True, column_scale=True),
            "perp-bias-slora4": dict(method="perp", lr=5e-3, add_bias=True, scale_rank=4),
            "perp-bias-slora8": dict(method="perp", lr=5e-3, add_bias=True, scale_rank=8),
            "lora": dict(method="lora", lr=2e-3, lora_rank=8), "distill": dict(method="distill", lr=3e-4)}


def pruned_folder(work: Path) -> Path:
    """The zoo LM pruned to 70% with SparseGPT (made once)."""
    import hashlib

    from prunekit.calibrate.data import calibration_data
    from prunekit.calibrate.pipeline import load_tokenizer, prune_model_dir
    from prunekit.registry import METHODS
    from prunekit.zoo.lm import lm_dir

    src = lm_dir()
    # keyed on the dense weights: a folder pruned from an earlier training of the zoo LM is never reused
    digest = hashlib.sha256((Path(src) / "model.safetensors").read_bytes()).hexdigest()[:12]
    out = work / f"zoo-lm-sparsegpt70-{digest}"
    if (out / "manifest.json").is_file():
        return out
    calib = calibration_data(load_tokenizer(src), None, 64, 128, seed=0)
    cfg = METHODS.config("sparsegpt", kind="calibrated")(sparsity=0.7)
    t0 = time.perf_counter()
    prune_model_dir(src, out, "sparsegpt", cfg, calibration=calib)
    print(f"pruned in {time.perf_counter() - t0:.1f}s -> {out}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", choices=sorted(SETTINGS), required=True)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=None, help="default: the setting's (SETTINGS)")
    ap.add_argument("--tag", default=None, help="suffix of the result file (default: the method)")
    ap.add_argument("--minutes", type=float, default=None, help="wall-clock cap on training (default none: the "
                    "step count decides; CPU seconds are reported)")
    ap.add_argument("--max-windows", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0, help="recovery seed (training windows, ScaleLoRA / LoRA init)")
    ap.add_argument("--work", default="/tmp/llm_recover")
    ap.add_argument("--out", default="docs/results/llm_recover.json")
    ap.add_argument("--db", default=None)
    a = ap.parse_args()
    torch.set_num_threads(2)
    from prunekit.calibrate.data import builtin_texts
    from prunekit.recover import Recovery, recover_dir

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    src = pruned_folder(work)
    setting = {**SETTINGS[a.method], **({"lr": a.lr} if a.lr is not None else {})}
    cfg = Recovery(steps=a.steps, batch_size=8, seq_len=128, max_minutes=a.minutes, seed=a.seed, **setting)
    t0 = time.perf_counter()
    m = recover_dir(src, work / f"rec-{a.method}", cfg, texts=builtin_texts("train"),
                    eval_texts=builtin_texts("validation"), max_windows=a.max_windows, overwrite=True)
    m["wall_seconds"], m["label"] = time.perf_counter() - t0, a.tag or a.method
    m["load_avg"] = os.getloadavg()[0]
    print(json.dumps({k: v for k, v in m.items() if k != "config"}, indent=1))
    out = Path(a.out)
    out.with_name(f"{out.stem}_{a.tag or a.method}.json").write_text(json.dumps(m, indent=1))
    if a.db:
        from prunekit.bench.store import ResultsStore, RunRecord

        with ResultsStore(a.db) as store:
            store.add(RunRecord("recover-zoo-lm", {"method": a.method, **cfg.to_dict()}, "llm",
                                {k: m[k] for k in ("ppl_dense", "ppl_before", "ppl_after", "gap_closed",
                                                   "trainable_params", "trainable_fraction") if k in m}, {},
                                {"train_s": m["train_seconds"]}), replace=True)


if __name__ == "__main__":
    main()
