"""Build the seeded random LLaMA of the llm-compressor side by side (about 60M parameters) as a save_pretrained folder.

    python benchmarks/llm_random_llama.py OUT_DIR [--tokenizer DIR]

Hidden 512, 8 blocks, MLP 1536, 8 heads, vocabulary 32000, untied head, seed 0 (bit-identical folders for the
same torch / transformers). The tokenizer (default: the cached zoo LM's, 2048 tokens) is saved with it so that
``prunekit prune`` can draw calibration windows from the built-in corpus.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def build(vocab: int = 32000, seed: int = 0) -> Any:
    """The random LLaMA (float32, eval mode)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512,
                      tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--tokenizer", type=Path, default=None, help="default: the cached zoo LM's folder")
    a = ap.parse_args()
    from transformers import AutoTokenizer

    from prunekit.zoo.lm import lm_dir

    model = build()
    tok = AutoTokenizer.from_pretrained(a.tokenizer or lm_dir(), local_files_only=True)
    a.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(a.out, safe_serialization=True)
    tok.save_pretrained(a.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"random LLaMA, {n / 1e6:.1f}M parameters, saved to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
