"""A minimal llm-compressor ``oneshot`` run from a saved folder to a saved pruned folder (the end-to-end side by side).

    .bench-env-llm/bin/python benchmarks/llmc_oneshot.py MODEL_DIR IDS.npy OUT --method wanda|sparsegpt \
        --structure 0:0|2:4 [--sparsity 0.5]

``IDS.npy`` holds the calibration token ids ``(N, L)`` (the same windows prunekit draws; written by
``llm_vs_llmcompressor_e2e.py``). One torch thread; the model is saved uncompressed (``save_compressed=False``,
llm-compressor's faster save; dense zeros like prunekit's folder).
"""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("ids")
    ap.add_argument("out")
    ap.add_argument("--method", choices=("wanda", "sparsegpt"), required=True)
    ap.add_argument("--structure", default="0:0")
    ap.add_argument("--sparsity", type=float, default=0.5)
    a = ap.parse_args()
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(a.model_dir)
    causal = any(x.endswith("ForCausalLM") for x in cfg.architectures or [])
    model = (AutoModelForCausalLM if causal else AutoModel).from_pretrained(a.model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    ids = np.load(a.ids)
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": np.ones_like(ids).tolist()})
    cls = SparseGPTModifier if a.method == "sparsegpt" else WandaPruningModifier
    recipe = cls(sparsity=a.sparsity, mask_structure=a.structure, targets=["Linear"],
                 ignore=["re:.*lm_head", "re:.*pooler.*"])
    oneshot(model=model, processor=tok, dataset=ds, recipe=[recipe], num_calibration_samples=ids.shape[0],
            max_seq_length=ids.shape[1], shuffle_calibration_samples=False, pipeline="sequential",
            output_dir=a.out, save_compressed=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
