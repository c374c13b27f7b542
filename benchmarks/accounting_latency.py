"""Accounting and latency figures: MAC counts cross-checked, and masks vs removal in measured speed.

Section 1 checks ``prunekit.accounting.count_macs`` against PyTorch's own ``FlopCounterMode`` (FLOPs / 2)
on every zoo model and on tiny random Hugging Face / ``nn.Transformer`` models. ``FlopCounterMode`` counts
nothing for CPU ``scaled_dot_product_attention`` kernels and for the fused ``nn.TransformerEncoder`` fast
path, so the reference runs with grad enabled (no fast path) and the MATH attention backend (plain bmm).
It also gives the cost of counting: one ``count_macs`` call over one plain forward, timed side by side.

Section 2 times dense, masked (same shapes, zeros) and physically smaller models with
``compare_latency`` (interleaved repeats): the theoretical speedup ``dense MACs / sparse MACs`` against
the measured one.

Run:  nice -n 10 .venv/bin/python benchmarks/accounting_latency.py --repeats 50 --threads 1
Smoke: .venv/bin/python benchmarks/accounting_latency.py --smoke
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from prunekit.accounting import call_with, count_macs, count_nonzeros, count_params, sparse_macs
from prunekit.bench.latency import compare_latency
from prunekit.masks import attach, prunable_parameters
from prunekit.patterns import NM, Unstructured, topk_mask
from prunekit.zoo import MODELS, example_inputs, get_model


def reference_macs(model: nn.Module, inputs: object) -> int:
    """PyTorch's FlopCounterMode count / 2, with attention decomposed into bmm (MATH backend)."""
    model.eval()
    with FlopCounterMode(display=False) as fc, sdpa_kernel(SDPBackend.MATH):
        call_with(model, inputs)
    return fc.get_total_flops() // 2


def count_overhead(model: nn.Module, x: object, repeats: int) -> float:
    """Median time of ``count_macs`` over median time of a no-grad forward, timed alternately."""
    fwd, cnt = [], []
    with torch.no_grad():
        call_with(model, x)  # warm-up: first calls pay one-time costs
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            call_with(model, x)
        t1 = time.perf_counter()
        count_macs(model, x)
        fwd.append(t1 - t0)
        cnt.append(time.perf_counter() - t1)
    return statistics.median(cnt) / statistics.median(fwd)


def hf_models() -> dict[str, tuple[nn.Module, object]]:
    """Tiny random BERT and Llama (hidden 64, 2 layers, 4 heads), built in code; 16 tokens, batch 2."""
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    ids = {"input_ids": torch.randint(0, 256, (2, 16))}
    bert = BertModel(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=256, vocab_size=256, max_position_embeddings=64))
    llama = LlamaForCausalLM(LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=256, vocab_size=256,
                                         max_position_embeddings=64))
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 256, batch_first=True), 2,
                                enable_nested_tensor=False)
    return {"hf-bert (tiny)": (bert, ids), "hf-llama (tiny, GQA)": (llama, ids),
            "nn.TransformerEncoder": (enc, torch.randn(2, 16, 64))}


def cross_check(repeats: int) -> str:
    """Markdown table: params, prunekit MACs, the reference, and the cost of counting."""
    cases = {n: (get_model(n, seed=0), example_inputs(n, batch=1)) for n in MODELS.names()}
    cases.update(hf_models())
    lines = ["| model | params | MACs (prunekit) | MACs (FlopCounterMode / 2) | equal | count time / forward time |",
             "|---|---:|---:|---:|:---:|---:|"]
    for name, (model, x) in cases.items():
        model.eval()
        ours, ref = count_macs(model, x), reference_macs(model, x)
        ratio = count_overhead(model, x, repeats)
        lines.append(f"| {name} | {count_params(model):,} | {ours:,} | {ref:,} | {'yes' if ours == ref else 'NO'} "
                     f"| {ratio:.1f}x |")
    return "\n".join(lines)


def masked(model: nn.Module, sparsity: float | None, pattern: object) -> nn.Module:
    """``model`` with magnitude masks on every Linear/Conv weight (zeros, same shapes)."""
    params = prunable_parameters(model, exclude=())
    attach(model, {k: topk_mask(p.detach().abs(), sparsity, pattern, name=k) for k, p in params.items()})
    return model


def mlp_variants() -> tuple[dict[str, nn.Module], torch.Tensor]:
    """MLP 512-2048-2048-10: dense, masked 50/90 % and 2:4, and 50/75 % of hidden units removed."""
    def build(h: int) -> nn.Module:
        return get_model("mlp", seed=0, in_features=512, hidden=(h, h), num_classes=10)

    models = {"dense (2048 hidden)": build(2048),
              "masked 50% unstructured": masked(build(2048), 0.5, Unstructured()),
              "masked 90% unstructured": masked(build(2048), 0.9, Unstructured()),
              "masked 2:4": masked(build(2048), None, NM(2, 4)),
              "removed 50% units (1024 hidden)": build(1024),
              "removed 75% units (512 hidden)": build(512)}
    return models, torch.randn(64, 512)


def resnet_variants() -> tuple[dict[str, nn.Module], torch.Tensor]:
    """ResNet-20 (CIFAR, 32x32): dense, masked 50 % / 90 %, and half / quarter width (channels removed)."""
    def build(w: float) -> nn.Module:
        return get_model("resnet20", seed=0, width_mult=w)

    models = {"dense (width 1.0)": build(1.0),
              "masked 50% unstructured": masked(build(1.0), 0.5, Unstructured()),
              "masked 90% unstructured": masked(build(1.0), 0.9, Unstructured()),
              "width 0.5 (channels removed)": build(0.5),
              "width 0.25 (channels removed)": build(0.25)}
    return models, torch.randn(16, 3, 32, 32)


def speed_table(models: dict[str, nn.Module], x: torch.Tensor, repeats: int, threads: int) -> str:
    """Markdown table: non-zeros, dense/sparse MACs, theoretical and measured speedup over the first."""
    cmp = compare_latency(models, x, warmup=5, repeats=repeats, threads=threads)
    base = count_macs(next(iter(models.values())), x)
    lines = ["| variant | non-zero params | dense MACs | sparse MACs | theoretical speedup | median ms "
             "| p10-p90 ms | min ms | measured speedup (medians) | measured speedup (mins) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    first = cmp.results[next(iter(models))]
    for name, m in models.items():
        r, sp = cmp.results[name], sparse_macs(m, x)
        lines.append(f"| {name} | {count_nonzeros(m):,} | {count_macs(m, x):,} | {sp:,} | {base / sp:.2f}x "
                     f"| {r.median_ms:.2f} | {r.p10_ms:.2f}-{r.p90_ms:.2f} | {r.min_ms:.2f} "
                     f"| {cmp.speedups[name]:.2f}x | {first.min_ms / r.min_ms:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    """Print the Markdown tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=50, help="timed repeats per model")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads while timing")
    ap.add_argument("--smoke", action="store_true", help="tiny run to check the script works")
    a = ap.parse_args()
    repeats = 3 if a.smoke else a.repeats
    print(f"torch {torch.__version__}, python {platform.python_version()}, threads {a.threads}, "
          f"repeats {repeats}\n")
    print("### MAC counts cross-checked\n")
    before = torch.get_num_threads()
    torch.set_num_threads(a.threads)
    try:
        print(cross_check(repeats) + "\n")
    finally:
        torch.set_num_threads(before)
    for title, variants in (("MLP 512-2048-2048-10, batch 64", mlp_variants),
                            ("ResNet-20, batch 16 x 3 x 32 x 32", resnet_variants)):
        models, x = variants()
        print(f"### Masks vs removal: {title}\n")
        print(speed_table(models, x, repeats, a.threads) + "\n")


if __name__ == "__main__":
    main()
