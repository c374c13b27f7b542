"""Tiny random-weight Hugging Face models of eight families (no download): hidden 32, two blocks per stack.

Used by the tests and by ``benchmarks/llm_reliability.py`` to check that ``llm prune`` keeps every
tensor; every dimension is a multiple of 4 so that 2:4 applies.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

VOCAB = 96
FAMILIES = ("LlamaForCausalLM", "MixtralForCausalLM", "Qwen3MoeForCausalLM", "Qwen2MoeForCausalLM", "BertModel",
            "BertForSequenceClassification", "BartForConditionalGeneration", "T5ForConditionalGeneration")


def tiny_hf_config(name: str) -> Any:
    """The config of the tiny model of class ``name`` (one of ``FAMILIES``)."""
    import transformers as T

    c = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB,
             max_position_embeddings=64)
    moe = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
    build = {
        "LlamaForCausalLM": lambda: T.LlamaConfig(**c, num_key_value_heads=2),
        "MixtralForCausalLM": lambda: T.MixtralConfig(**c, num_key_value_heads=2, num_local_experts=4,
                                                      num_experts_per_tok=2),
        "Qwen3MoeForCausalLM": lambda: T.Qwen3MoeConfig(**c, **moe, num_key_value_heads=2, head_dim=8),
        "Qwen2MoeForCausalLM": lambda: T.Qwen2MoeConfig(**c, **moe, num_key_value_heads=2,
                                                        shared_expert_intermediate_size=64),
        "BertModel": lambda: T.BertConfig(**c),
        "BertForSequenceClassification": lambda: T.BertConfig(**c, num_labels=3),
        "BartForConditionalGeneration": lambda: T.BartConfig(
            vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64),
        "T5ForConditionalGeneration": lambda: T.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                                         num_heads=4, decoder_start_token_id=0),
    }
    if name not in build:
        raise ValueError(f"unknown tiny model {name!r}; accepted: {', '.join(FAMILIES)}")
    return build[name]()


def tiny_hf_model(name: str, seed: int = 0) -> nn.Module:
    """A seeded random model of class ``name`` in eval mode."""
    import transformers as T

    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.manual_seed(seed)
    return getattr(T, name)(tiny_hf_config(name)).eval()


def save_tiny_hf(name: str, path: str | Path, seed: int = 0) -> nn.Module:
    """Build the tiny model, ``save_pretrained`` it to ``path`` and return it."""
    model = tiny_hf_model(name, seed)
    model.save_pretrained(path)
    return model


def tiny_ids(n: int = 6, seq: int = 16, seed: int = 0) -> torch.Tensor:
    """Seeded calibration token ids ``(n, seq)`` (ids 3.. so no special token of the tiny configs)."""
    return torch.randint(3, VOCAB, (n, seq), generator=torch.Generator().manual_seed(seed))
