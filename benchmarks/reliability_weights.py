"""Every weight accounted for by ``prune_``: what was pruned, what was kept by which rule, reported vs counted.

For each tiny model (MultiheadAttention, LSTM, GRU, GPT-2 ``Conv1D``, a fused-expert MoE block, and a
model with a raw weight no rule covers), run ``prune_(model, Magnitude(0.9))`` and ``NM(2, 4)``, then count
the zeros in the live tensors independently of the report: over the tensors the ledger says it pruned
and over every floating tensor of rank >= 2. "Before" is the figure on main before the layers change
(issue 11: MultiheadAttention 58.5% zeros over the weight matrices at a reported 0.90; LSTM 5.3%).

Run:  .venv/bin/python benchmarks/reliability_weights.py   (its table is section (b) of docs/results/reliability.md)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import prunekit as pk
from prunekit.layers import UncoveredWeightError


class RNNNet(nn.Module):
    """Embedding -> recurrent layer -> Linear head."""

    def __init__(self, cell: type[nn.RNNBase]) -> None:
        super().__init__()
        self.emb = nn.Embedding(32, 16)
        self.rnn = cell(16, 16, num_layers=2, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.emb(x))[0][:, -1])


class Experts(nn.Module):
    """A fused-expert block as transformers 5 stores it: (E, out, in) tensors, a router, a one-output gate."""

    def __init__(self, e: int = 4, h: int = 16, i: int = 24) -> None:
        super().__init__()
        self.gate = nn.Linear(h, e, bias=False)  # router
        self.experts = nn.Module()
        self.experts.gate_up_proj = nn.Parameter(torch.randn(e, 2 * i, h))
        self.experts.down_proj = nn.Parameter(torch.randn(e, h, i))
        self.shared_expert_gate = nn.Linear(h, 1, bias=False)
        self.proj = nn.Linear(h, h)


class RawWeight(nn.Module):
    """A module holding a raw (8, 16) parameter that no rule covers."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 8)
        self.table = nn.Parameter(torch.randn(8, 16))


def gpt2_conv1d() -> nn.Module:
    from transformers.pytorch_utils import Conv1D

    net = nn.Sequential()
    net.add_module("c_attn", Conv1D(48, 16))
    net.add_module("c_proj", Conv1D(16, 48))
    return net


MODELS: dict[str, Callable[[], nn.Module]] = {
    "nn.TransformerEncoderLayer(16, 4)": lambda: nn.TransformerEncoderLayer(16, 4, 32, batch_first=True),
    "Embedding + LSTM(2 layers) + Linear": lambda: RNNNet(nn.LSTM),
    "Embedding + GRU(2 layers) + Linear": lambda: RNNNet(nn.GRU),
    "GPT-2 Conv1D x 2": gpt2_conv1d,
    "fused MoE experts + router + 1-output gate": Experts,
    "raw (8, 16) parameter": RawWeight,
}
BEFORE = {"nn.TransformerEncoderLayer(16, 4)": "0.585 (d_model 64)", "Embedding + LSTM(2 layers) + Linear": "0.053"}


def _zeros(tensors: list[torch.Tensor]) -> float:
    return sum(int((t == 0).sum()) for t in tensors) / max(1, sum(t.numel() for t in tensors))


def row(name: str, make: Callable[[], nn.Module], cfg: pk.Config, label: str) -> str:
    torch.manual_seed(0)
    model = make()
    try:
        rep = pk.prune_(model, cfg)
    except UncoveredWeightError as e:
        return f"| {name} | {label} | error (rc 2 at the CLI): {str(e).splitlines()[0][:120]} | | | | |"
    params = dict(model.named_parameters())
    pruned = [params[k].detach() for k in rep.ledger.prunable]
    weights = [p.detach() for p in params.values() if p.dim() >= 2 and p.is_floating_point()]
    kept = ", ".join(f"{r} {len(v)}" for r, v in sorted(rep.ledger.kept_by_reason().items()))
    return (f"| {name} | {label} | {len(pruned)} | {kept or '-'} | {rep.sparsity:.4f} | {_zeros(pruned):.4f} "
            f"| {_zeros(weights):.4f} | {BEFORE.get(name, '') if label == 'magnitude 0.9' else ''} |")


def table() -> str:
    lines = ["| model | request | tensors pruned | kept by rule | reported (pruned weights) | zeros counted, pruned "
             "tensors | zeros counted, all weight matrices | all weight matrices before |",
             "|---|---|---:|---|---:|---:|---:|---:|"]
    for name, make in MODELS.items():
        lines.append(row(name, make, pk.Magnitude(0.9), "magnitude 0.9"))
        if name != "raw (8, 16) parameter":
            lines.append(row(name, make, pk.Magnitude(None, pattern=pk.NM(2, 4)), "magnitude 2:4"))
    torch.manual_seed(0)
    rep = pk.prune_(RawWeight(), pk.Magnitude(0.9, exclude=["table"]))
    lines.append(f"| raw (8, 16) parameter | magnitude 0.9, exclude=['table'] | {len(rep.ledger.prunable)} | "
                 f"{', '.join(f'{r} {len(v)}' for r, v in rep.ledger.kept_by_reason().items())} | "
                 f"{rep.sparsity:.4f} | | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown table here (default: print it)")
    text = table()
    args = ap.parse_args()
    if args.out is None:
        print(text)
    else:
        from prunekit.io import atomic_write_text

        atomic_write_text(args.out, "Produced by `python benchmarks/reliability_weights.py --out "
                          f"{args.out}`.\n\n" + text)


if __name__ == "__main__":
    main()
