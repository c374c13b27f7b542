"""Peak memory (RSS) while pruning a 1-billion-parameter random LLaMA on CPU with the calibration engine.

    nice -n 10 python benchmarks/llm_memory.py [--solver sparsegpt] [--nsamples 4] [--seq-len 128] [--out FILE.md]
        [--no-pin-malloc]

The model (TinyLlama-1.1B shape: hidden 2048, 22 layers, MLP 5632, 32 heads / 4 KV heads, vocab
32000) is built on the meta device and materialised once in float32 with seeded N(0, 0.02)
weights, so loading never holds two copies. The bound checked is
1.2 * (model bytes + one block's bytes + calibration activations), against the process's peak RSS
(``resource.getrusage``), which also counts the Python interpreter and the imported libraries.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import time

import torch

GiB = 1024**3


def rss_now() -> int:
    """Current resident set size in bytes (from /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build_model(seed: int = 0) -> torch.nn.Module:
    """A random 1.1B LLaMA in float32, materialised from the meta device (one copy of the weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                      num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048,
                      tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.fill_(1.0)  # RMSNorm weights
            else:
                p.normal_(0.0, 0.02, generator=gen)
        rot = model.model.rotary_emb  # its buffers are computed at init, which to_empty skipped
        inv_freq, _ = rot.compute_default_rope_parameters(cfg)
        rot.inv_freq.copy_(inv_freq)
        rot.original_inv_freq.copy_(inv_freq)
    return model.eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--solver", default="sparsegpt", choices=["sparsegpt", "wanda", "magnitude"])
    ap.add_argument("--nsamples", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 suits a shared machine)")
    ap.add_argument("--no-pin-malloc", action="store_true", help="leave glibc's malloc thresholds dynamic")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from prunekit.calibrate import SparseGPT, Wanda, prune_blocks
    from prunekit.calibrate.config import CalibratedMagnitude

    base = rss_now()
    t0 = time.perf_counter()
    model = build_model()
    built = rss_now()
    n_params = sum(p.numel() for p in model.parameters())
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    block_bytes = sum(p.numel() * p.element_size() for p in model.model.layers[0].parameters())
    ids = torch.randint(0, 32000, (a.nsamples, a.seq_len), generator=torch.Generator().manual_seed(0))
    act_bytes = 3 * a.nsamples * a.seq_len * 2048 * 4  # block inputs, dense outputs, pruned outputs (fp32)
    cfg = {"sparsegpt": SparseGPT(0.5, batch_size=a.nsamples), "wanda": Wanda(0.5, batch_size=a.nsamples),
           "magnitude": CalibratedMagnitude(0.5, batch_size=a.nsamples)}[a.solver]
    t1 = time.perf_counter()
    # masks stay bit-packed
    report = prune_blocks(model, a.solver, cfg, ids, attach_masks=False, pin_malloc=not a.no_pin_malloc)
    t2 = time.perf_counter()
    peak = peak_rss()
    bound = 1.2 * (model_bytes + block_bytes + act_bytes)
    cpu = subprocess.run(["bash", "-c", "lscpu | grep 'Model name'"], capture_output=True, text=True).stdout.strip()
    lines = [
        f"Machine: {os.cpu_count()} CPU cores ({cpu.split(':')[-1].strip()}), Python {platform.python_version()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); model float32 on CPU, "
        f"{n_params / 1e9:.3f}B parameters; solver {a.solver} 50%, "
        f"{a.nsamples} x {a.seq_len} calibration tokens.",
        "",
        "| quantity | GiB |",
        "|---|---:|",
        f"| RSS after imports (before the model) | {base / GiB:.2f} |",
        f"| RSS after materialising the model | {built / GiB:.2f} |",
        f"| model weights | {model_bytes / GiB:.2f} |",
        f"| one block | {block_bytes / GiB:.3f} |",
        f"| calibration activations (3 copies) | {act_bytes / GiB:.4f} |",
        f"| bound = 1.2 x (model + block + activations) | {bound / GiB:.2f} |",
        f"| **peak RSS while pruning** | **{peak / GiB:.2f}** |",
        "",
        f"Peak RSS is {peak / bound:.3f} of the bound ({'below' if peak < bound else 'ABOVE'} it). "
        f"Build {t1 - t0:.0f} s, pruning {t2 - t1:.0f} s; reached sparsity {report.sparsity:.4f}.",
    ]
    md = "\n".join(lines)
    print(md)
    if a.out:
        with open(a.out, "w") as f:
            f.write(md + "\n")
    return 0 if peak < bound else 1


if __name__ == "__main__":
    sys.exit(main())
