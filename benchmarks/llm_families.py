"""``llm prune`` on twenty more tiny random Hugging Face families than the tests cover: reported vs counted.

Wanda 0.5 through ``prunekit.calibrate.pipeline.prune_model_dir`` (what ``prunekit prune MODEL_DIR`` runs)
on seeded tiny configs (hidden 32, two blocks), 4 x 16 random calibration ids. A row says OK when the
saved folder passed the saved-vs-source check (every tensor pruned or bit-identical) and gives the
manifest's reported sparsity next to the zeros counted in the saved files; FAIL rows give the error.

Run:  .venv/bin/python benchmarks/llm_families.py [CLASS ...]
"""

from __future__ import annotations

import logging
import sys
import tempfile
import warnings
from pathlib import Path

import torch
import transformers as T

from prunekit.calibrate import Wanda
from prunekit.calibrate.io import load_manifest
from prunekit.calibrate.pipeline import prune_model_dir

warnings.filterwarnings("ignore")
logging.getLogger("transformers").setLevel(logging.ERROR)

V = 96
c = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=V,
         max_position_embeddings=64)
kv = dict(num_key_value_heads=2)
moe = dict(num_local_experts=4, num_experts_per_tok=2)
seq2seq = dict(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
               decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64)
FAM = {
    "MistralForCausalLM": lambda: T.MistralConfig(**c, **kv),
    "Qwen2ForCausalLM": lambda: T.Qwen2Config(**c, **kv),
    "Qwen3ForCausalLM": lambda: T.Qwen3Config(**c, **kv, head_dim=8),
    "GemmaForCausalLM": lambda: T.GemmaConfig(**c, **kv, head_dim=8),
    "Gemma2ForCausalLM": lambda: T.Gemma2Config(**c, **kv, head_dim=8),
    "PhiForCausalLM": lambda: T.PhiConfig(**c),
    "Phi3ForCausalLM": lambda: T.Phi3Config(**c, **kv, pad_token_id=0),
    "OPTForCausalLM": lambda: T.OPTConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          ffn_dim=64, max_position_embeddings=64, word_embed_proj_dim=32),
    "GPT2LMHeadModel": lambda: T.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64),
    "FalconForCausalLM": lambda: T.FalconConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                                num_attention_heads=4),
    "BloomForCausalLM": lambda: T.BloomConfig(vocab_size=V, hidden_size=32, n_layer=2, n_head=4),
    "GPTNeoXForCausalLM": lambda: T.GPTNeoXConfig(**c),
    "OlmoeForCausalLM": lambda: T.OlmoeConfig(**c, **kv, num_experts=4, num_experts_per_tok=2),
    "PhimoeForCausalLM": lambda: T.PhimoeConfig(**c, **kv, **moe),
    "GraniteMoeForCausalLM": lambda: T.GraniteMoeConfig(**c, **kv, **moe),
    "DeepseekV3ForCausalLM": lambda: T.DeepseekV3Config(
        **c, num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
        v_head_dim=8, n_group=1, topk_group=1),
    "GptOssForCausalLM": lambda: T.GptOssConfig(**c, **kv, **moe, head_dim=8),
    "RobertaForSequenceClassification": lambda: T.RobertaConfig(**c, num_labels=3, pad_token_id=1),
    "DistilBertForSequenceClassification": lambda: T.DistilBertConfig(vocab_size=V, dim=32, n_layers=2, n_heads=4,
                                                                      hidden_dim=64, max_position_embeddings=64),
    "MBartForConditionalGeneration": lambda: T.MBartConfig(**seq2seq),
}

def row(name: str, ids: torch.Tensor) -> str:
    """One Markdown row: prune the tiny ``name`` model, then read the manifest's check of the saved files."""
    try:
        torch.manual_seed(0)
        model = getattr(T, name)(FAM[name]()).eval()
        with tempfile.TemporaryDirectory() as d:
            model.save_pretrained(Path(d) / "src")
            _, out = prune_model_dir(Path(d) / "src", Path(d) / "out", None, Wanda(0.5), calibration=ids)
            man = load_manifest(out)
    except Exception as e:  # noqa: BLE001 - a failing family is a row of the table
        return f"| {name} | FAIL: {type(e).__name__}: {str(e)[:160]} | | | | | |"
    t, kept = man["tensors"], man["ledger"]["summary"]["kept"]
    rules = ", ".join(f"{k} {v['tensors']}" for k, v in kept.items())
    return (f"| {name} | OK | {len(t['pruned'])} | {len(t['kept_identical'])} | {rules} | {man['sparsity']:.4f} "
            f"| {t['counted_sparsity']:.4f} |")


def main() -> None:
    ids = torch.randint(3, V, (4, 16), generator=torch.Generator().manual_seed(0))
    print("| class | result | tensors pruned (files) | bit-identical (files) | kept by rule | reported | counted |")
    print("|---|---|---:|---:|---|---:|---:|")
    for name in sys.argv[1:] or list(FAM):
        print(row(name, ids), flush=True)


if __name__ == "__main__":
    main()
