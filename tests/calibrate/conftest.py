"""Tiny random-weight transformers of every architecture family the engine must handle."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

ARCHS = ["llama", "mistral", "qwen2", "opt", "gpt2", "gpt_neox", "phi", "gemma", "bert"]
VOCAB = 96


def tiny_config(arch: str):
    """Hidden 32, 2 layers, 4 heads: small enough for a unit test, every dimension divisible by 4."""
    import transformers as T

    c = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             vocab_size=VOCAB, max_position_embeddings=64)
    if arch in ("llama", "mistral", "qwen2"):
        cls = {"llama": T.LlamaConfig, "mistral": T.MistralConfig, "qwen2": T.Qwen2Config}[arch]
        return cls(**c, num_key_value_heads=2)
    if arch == "gemma":
        return T.GemmaConfig(**c, num_key_value_heads=2, head_dim=8)
    if arch == "phi":
        return T.PhiConfig(**c)
    if arch == "gpt_neox":
        return T.GPTNeoXConfig(**c)
    if arch == "bert":
        return T.BertConfig(**c)
    if arch == "opt":
        return T.OPTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, vocab_size=VOCAB,
                           max_position_embeddings=64, word_embed_proj_dim=32)
    if arch == "gpt2":
        return T.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64, bos_token_id=0,
                            eos_token_id=0)
    raise ValueError(arch)


_CACHE: dict[str, torch.nn.Module] = {}


def tiny_model(arch: str) -> torch.nn.Module:
    """A fresh copy of the seeded tiny model of ``arch`` (built once per session)."""
    import transformers as T

    logging.getLogger("transformers").setLevel(logging.ERROR)
    if arch not in _CACHE:
        torch.manual_seed(0)
        cls = T.AutoModel if arch == "bert" else T.AutoModelForCausalLM
        _CACHE[arch] = cls.from_config(tiny_config(arch)).eval()
    return copy.deepcopy(_CACHE[arch])


def outputs(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Logits of a causal LM or last hidden states of an encoder."""
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.fixture
def calib_ids() -> torch.Tensor:
    """Six seeded calibration samples of 16 tokens."""
    return torch.randint(0, VOCAB, (6, 16), generator=torch.Generator().manual_seed(0))
