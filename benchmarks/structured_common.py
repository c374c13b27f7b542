"""Shared pieces of the structured-pruning benchmarks: models, and torch-pruning 1.6.1 driven to a MACs target.

Run these scripts with the benchmark environment (``.bench-env/bin/python``), which has torch-pruning;
prunekit never depends on it.
"""

from __future__ import annotations

import copy
import time
import traceback
from typing import Any

import torch
from torch import nn

from prunekit.accounting import count_macs
from prunekit.structured import Structured, remove_
from prunekit.structured.trace import call_model, output_tensors

ZOO = ["mlp", "lenet5", "cnn1d", "resnet20", "resnet56", "vgg", "mobilenetv2", "vit"]
HF = ["bert", "gpt2", "llama-gqa", "qwen2", "opt", "hf-vit"]


def hf_model(kind: str) -> nn.Module:
    """A tiny randomly initialized transformers model (hidden 64, 2 layers)."""
    import transformers as t

    t.logging.set_verbosity_error()
    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    torch.manual_seed(0)
    if kind == "bert":
        return t.BertModel(t.BertConfig(vocab_size=128, intermediate_size=128, **small))
    if kind == "gpt2":
        return t.GPT2LMHeadModel(t.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4))
    if kind == "llama-gqa":
        return t.LlamaForCausalLM(t.LlamaConfig(vocab_size=128, intermediate_size=128, num_key_value_heads=2, **small))
    if kind == "qwen2":
        return t.Qwen2ForCausalLM(t.Qwen2Config(vocab_size=128, intermediate_size=128, num_key_value_heads=2, **small))
    if kind == "opt":
        return t.OPTForCausalLM(t.OPTConfig(vocab_size=128, ffn_dim=128, word_embed_proj_dim=64, **small))
    if kind == "hf-vit":
        return t.ViTForImageClassification(t.ViTConfig(image_size=32, patch_size=4, intermediate_size=128, **small))
    raise ValueError(kind)


def build(name: str) -> tuple[nn.Module, Any]:
    """A model and example inputs by benchmark name."""
    if name in ZOO:
        from prunekit.zoo import example_inputs, get_model

        return get_model(name, seed=0), example_inputs(name, batch=2)
    from prunekit.structured.hf import example_inputs

    m = hf_model(name)
    x = example_inputs(m, batch=2, seq=16)
    if "input_ids" in x:
        x["use_cache"] = False  # torch-pruning needs tensors, not caches, out of the forward (its issue #455)
    return m, x


def outputs(model: nn.Module, inputs: Any) -> list[torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return output_tensors(call_model(model, inputs))


# ------------------------------------------------------------------------------------------------------
# torch-pruning
def _output_layers(model: nn.Module) -> list[nn.Module]:
    """The layers that produce the model's outputs (classifier, LM head, pooler)."""
    names = ("fc", "classifier", "head", "lm_head", "pooler", "fc3", "out")
    out = [m for n, m in model.named_modules() if n.split(".")[-1] in names and isinstance(m, (nn.Linear, nn.Module))
           and any(isinstance(c, nn.Linear) for c in [m, *m.modules()])]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return out or linears[-1:]


def _embeddings(model: nn.Module) -> list[nn.Module]:
    """For transformers: the embedding layers, so torch-pruning keeps the hidden (residual) width and
    prunes heads and MLP neurons, as prunekit does by default (LayerNorm mixes the hidden units)."""
    if getattr(model, "config", None) is None:
        return []
    return [m for n, m in model.named_modules()
            if isinstance(m, nn.Embedding) or (isinstance(m, nn.Conv2d) and "embed" in n)]


def _heads(model: nn.Module) -> dict[nn.Module, int]:
    """torch-pruning's ``num_heads``: each q/k/v projection and its number of heads."""
    out: dict[nn.Module, int] = {}
    cfg = getattr(model, "config", None)
    for _, m in model.named_modules():
        kids = dict(m.named_children())
        for q, k, v in (("q", "k", "v"), ("q_proj", "k_proj", "v_proj"), ("query", "key", "value")):
            if q in kids and k in kids and v in kids:
                h = getattr(m, "num_heads", None) or getattr(m, "num_attention_heads", None) or \
                    getattr(cfg, "num_attention_heads", None)
                kvh = getattr(cfg, "num_key_value_heads", None) or h
                out[kids[q]], out[kids[k]], out[kids[v]] = h, kvh, kvh
    return out


def _fix_attributes(model: nn.Module) -> int:
    """The manual attribute fixes torch-pruning's README asks for after pruning heads; returns how many."""
    n = 0
    for m in model.modules():
        kids = dict(m.named_children())
        q = kids.get("q") or kids.get("q_proj") or kids.get("query")
        hd = getattr(m, "head_dim", None) or getattr(m, "attention_head_size", None)
        if q is None or not hd:
            continue
        for attr in ("num_heads", "num_attention_heads"):
            if hasattr(m, attr):
                setattr(m, attr, q.out_features // hd)
                n += 1
        if hasattr(m, "all_head_size"):
            m.all_head_size = q.out_features
            n += 1
    return n


def tp_prune(model: nn.Module, inputs: Any, ratio: float, importance: str = "l2", round_to: int | None = None,
             global_pruning: bool = False) -> nn.Module:
    """One torch-pruning ``BasePruner.step()`` at channel ratio ``ratio`` (heads pruned at the same ratio)."""
    import torch_pruning as tp

    imp = {"l2": tp.importance.GroupMagnitudeImportance(p=2), "l1": tp.importance.GroupMagnitudeImportance(p=1),
           "random": tp.importance.RandomImportance()}[importance]
    heads = _heads(model)
    pruner = tp.pruner.BasePruner(model, inputs, importance=imp, pruning_ratio=ratio,
                                  ignored_layers=_output_layers(model) + _embeddings(model),
                                  round_to=round_to, num_heads=heads, output_transform=_first_output,
                                  prune_num_heads=bool(heads), prune_head_dims=False,
                                  head_pruning_ratio=ratio if heads else 0.0, global_pruning=global_pruning)
    pruner.step()
    _fix_attributes(model)
    return model


def _first_output(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else output_tensors(out)[0]


def tp_to_macs(model: nn.Module, inputs: Any, target: float, iters: int = 10, prune: Any = None,
               **kw: Any) -> tuple[nn.Module, float]:
    """torch-pruning has channel ratios only: bisect the ratio until MACs fall to ``target`` (or below).

    ``prune(model, inputs, ratio, **kw)`` prunes in place and returns the model (default :func:`tp_prune`)."""
    prune = prune or tp_prune
    base = count_macs(model, inputs)
    lo, hi, best, best_r = 0.0, 0.95, None, None
    for _ in range(iters):
        mid = (lo + hi) / 2
        m = prune(copy.deepcopy(model), inputs, mid, **kw)
        if count_macs(m, inputs) / base <= target:
            hi, best, best_r = mid, m, mid
        else:
            lo = mid
    if best is None:
        best, best_r = prune(copy.deepcopy(model), inputs, hi, **kw), hi
    return best, best_r


def ours_to_macs(model: nn.Module, inputs: Any, target: float, **kw: Any) -> nn.Module:
    remove_(model, inputs, Structured(target_macs=target, **kw))
    return model


def attempt(fn, *args: Any, **kw: Any) -> tuple[Any, str | None, float]:
    """Run ``fn``; return (result, error line or None, seconds)."""
    t0 = time.perf_counter()
    try:
        return fn(*args, **kw), None, time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - the benchmark records every failure
        tb = traceback.extract_tb(e.__traceback__)[-1]
        return None, f"{type(e).__name__}: {str(e)[:120]} ({tb.filename.split('/')[-1]}:{tb.lineno})", \
            time.perf_counter() - t0


def machine() -> str:
    import platform
    import subprocess

    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    nproc = subprocess.run("nproc", shell=True, capture_output=True, text=True).stdout.strip()
    name = cpu.split(":", 1)[-1].strip()
    return f"{nproc} cores, {name}, torch {torch.__version__}, Python {platform.python_version()}"
