"""How approximate is removing LayerNorm-normalized (residual) widths? ``prune_normalized=True`` measured.

    nice -n 10 .venv/bin/python benchmarks/structured_norm_error.py

For the zoo ViT and a tiny LLaMA config (RMSNorm), every 2nd unit of every group is zeroed in the dense model
(weights, so those channels carry zeros) and then removed, once with the exact groups only and once with the
normalized ones too. Exact removal changes nothing (up to float error); through a norm the statistics are taken
over the kept channels only (mean and variance of LayerNorm, mean square of RMSNorm), so the output moves. Printed:
max abs output change relative to the max abs output.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from prunekit.structured import build_graph, remove_units_  # noqa: E402
from structured._util import forward, zero_units_  # noqa: E402


def error(model, x, normalized: bool) -> float:
    g = build_graph(model, x)
    groups = g.groups(include_inexact=normalized)
    drop = {gr.id: torch.arange(0, gr.size, 2) for gr in groups}
    zero_units_(model, g, {k: v for k, v in drop.items()})
    params = dict(model.named_parameters())
    with torch.no_grad():  # zero_units_ covers exact groups; do the same for the normalized ones
        for gr in groups:
            for m in gr.members:
                if m.name in params and gr.inexact is not None:
                    hit = torch.isin(g.coords(m, gr), drop[gr.id])
                    params[m.name].index_fill_(m.dim, torch.nonzero(hit).flatten(), 0.0)
    before = forward(model, x)[0]
    keep = {gr.id: torch.tensor([i for i in range(gr.size) if i % 2]) for gr in groups}
    remove_units_(model, x, g, keep)
    after = forward(model, x)[0]
    return float((after - before).abs().max() / before.abs().max())


def main() -> None:
    from prunekit.zoo import example_inputs, get_model

    torch.manual_seed(0)
    for name in ("vit",):
        for normalized in (False, True):
            print(f"{name} prune_normalized={normalized}: relative max output change "
                  f"{error(get_model(name, seed=0), example_inputs(name), normalized):.2e}")
    try:
        import transformers
    except ImportError:
        return
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    x = {"input_ids": torch.randint(0, 64, (2, 8))}
    for normalized in (False, True):
        torch.manual_seed(0)
        m = transformers.LlamaForCausalLM(cfg).eval()
        print(f"llama (RMSNorm) prune_normalized={normalized}: relative max output change "
              f"{error(m, x, normalized):.2e}")


if __name__ == "__main__":
    main()
