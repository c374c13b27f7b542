"""Evaluation under a pinned protocol: perplexity of causal LMs, embedding fidelity of encoders.

Perplexity: the evaluation texts are tokenized one document at a time and joined with the tokens
of ``"\\n\\n"``; the stream is cut into non-overlapping windows of ``seq_len`` tokens, the tail
dropped; PPL = exp(sum of token NLLs / number of predicted tokens), each window predicting its
``seq_len - 1`` next tokens. The ``Protocol`` (and its hash) is stored with every result.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .blocks import forward_kwargs, max_positions


@dataclass(frozen=True)
class Protocol:
    """How a perplexity was measured; two numbers compare only when their protocols are equal."""

    dataset: str
    split: str
    seq_len: int
    n_windows: int
    join: str = json.dumps("\n\n")
    tail: str = "dropped"
    stride: str = "non-overlapping"
    tokenizer: str = ""
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        """The protocol as a JSON-able dict with its short hash."""
        d = asdict(self)
        d["hash"] = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]
        return d


def windows(stream: Tensor, seq_len: int, max_windows: int | None = None) -> Tensor:
    """Non-overlapping windows ``(n, seq_len)`` of a token stream, the tail dropped."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len must be an integer >= 2, got {seq_len!r}")
    n = stream.numel() // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"the evaluation text has {stream.numel()} tokens, fewer than seq_len={seq_len}")
    return stream[: n * seq_len].reshape(n, seq_len)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


Progress = Callable[[str, int, int], None]  # progress(stage, done, total)


def perplexity(model: nn.Module, stream: Tensor, seq_len: int, batch_size: int = 8, max_windows: int | None = None,
               dataset: str = "custom", split: str = "validation", tokenizer: str = "",
               progress: Progress | None = None) -> dict[str, Any]:
    """Perplexity of a causal LM on non-overlapping windows of ``stream``; returns ppl, nll, tokens, protocol.

    ``progress("perplexity", done, total)`` is called after every batch of windows."""
    limit = max_positions(model)
    if limit is not None and seq_len > limit:
        raise ValueError(f"seq_len={seq_len} is beyond the model's maximum sequence length {limit}")
    win = windows(stream, seq_len, max_windows)
    dev, extra = _device_of(model), forward_kwargs(model)
    was = model.training
    model.eval()
    nll, count = 0.0, 0
    batches = win.split(batch_size)
    with torch.no_grad():
        for i, ids in enumerate(batches):
            ids = ids.to(dev)
            logits = model(input_ids=ids, **extra).logits.float()  # (B, L, V)
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                   reduction="sum")
            nll += float(loss)
            count += ids[:, 1:].numel()
            if progress is not None:
                progress("perplexity", i + 1, len(batches))
    model.train(was)
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    proto = Protocol(dataset, split, seq_len, int(win.shape[0]), tokenizer=tokenizer, dtype=dtype)
    mean = nll / count
    return {"ppl": math.exp(mean), "nll": mean, "tokens": count, "protocol": proto.to_dict()}


def pooled_embeddings(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, batch_size: int = 32,
                      progress: Progress | None = None, stage: str = "embeddings") -> Tensor:
    """Mean-pooled last hidden states over the attended tokens (sentence-transformers pooling); ``(N, d)``.

    ``progress(stage, done, total)`` is called after every batch."""
    dev = _device_of(model)
    outs = []
    was = model.training
    model.eval()
    pairs = list(zip(input_ids.split(batch_size), attention_mask.split(batch_size)))
    with torch.no_grad():
        for i, (ids, am) in enumerate(pairs):
            out = model(input_ids=ids.to(dev), attention_mask=am.to(dev), output_hidden_states=True)
            h = getattr(out, "last_hidden_state", None)
            h = out.hidden_states[-1] if h is None else h  # (B, L, d)
            m = am.to(dev)[..., None].to(h.dtype)
            outs.append(((h * m).sum(1) / m.sum(1).clamp_min(1)).float().cpu())
            if progress is not None:
                progress(stage, i + 1, len(pairs))
    model.train(was)
    return torch.cat(outs)


def embedding_fidelity(dense: Tensor, pruned: Tensor) -> float:
    """Mean cosine similarity between the dense and the pruned model's pooled embeddings (1 = identical)."""
    if dense.shape != pruned.shape:
        raise ValueError(f"embeddings differ in shape: dense {list(dense.shape)} vs pruned {list(pruned.shape)}")
    return float(F.cosine_similarity(dense.float(), pruned.float(), dim=-1).mean())


def encode_texts(tokenizer: Any, texts: list[str], max_len: int = 128) -> tuple[Tensor, Tensor]:
    """Token ids and attention mask ``(N, L)`` of ``texts``, padded and truncated to ``max_len``."""
    if not texts:
        raise ValueError("texts is empty: give at least one text to embed")
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def layer_table(report: Any) -> str:
    """Markdown table of a pruning report: per layer sparsity, target and relative reconstruction error."""
    return report.to_markdown()
