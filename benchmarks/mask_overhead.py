"""Mask enforcement overhead per SGD step: dense vs ``torch.nn.utils.prune`` vs prunekit ``MaskSet``.

One process, the three variants interleaved round by round on copies of one model with the same masks
(random, 90% of every prunable weight), so machine noise hits them alike. Each step is forward,
cross-entropy, ``zero_grad``, backward, ``optimizer.step()`` (SGD momentum 0.9, weight decay 5e-4, as
``fit``). Reports the median step time of each variant and its overhead over dense: the median over
rounds of (variant's round median / dense's round median) - 1. Usage:

    python benchmarks/mask_overhead.py [--threads 1] [--rounds 30] [--steps 20] [--models cnn1d mlp vit]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from prunekit.masks import attach, prunable_parameters
from prunekit.zoo import get_model

# (model, batch size, example shape); the ViT is shrunk to 16x16 images and 2 blocks to keep runs short
SETUPS: dict[str, tuple[Callable[[], nn.Module], int, tuple[int, ...]]] = {
    "cnn1d": (lambda: get_model("cnn1d", seed=0), 128, (40,)),
    "mlp": (lambda: get_model("mlp", seed=0), 128, (40,)),
    "vit": (lambda: get_model("vit", seed=0, image_size=16, depth=2), 64, (3, 16, 16)),
}


def _masks(model: nn.Module, sparsity: float = 0.9) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: torch.rand(p.shape, generator=g) >= sparsity for k, p in prunable_parameters(model).items()}


def _with_torch_prune(model: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
    for name in masks:
        prune.custom_from_mask(model.get_submodule(name.rpartition(".")[0]), "weight", masks[name])
    return model


def _step_fn(model: nn.Module, x: Tensor, y: Tensor, masks: dict[str, Tensor] | None) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    if masks is not None:
        attach(model, masks).watch(opt)

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def measure(name: str, rounds: int, steps: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds per step of each variant on ``name``, and the median over rounds of each variant's
    round median divided by dense's (paired within a round, so load that drifts between rounds cancels)."""
    make, batch, shape = SETUPS[name]
    base = make()
    masks = _masks(base)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn((batch, *shape), generator=g), torch.randint(0, 10, (batch,), generator=g)
    fns = {"dense": _step_fn(copy.deepcopy(base), x, y, None),
           "torch.nn.utils.prune": _step_fn(_with_torch_prune(copy.deepcopy(base), masks), x, y, None),
           "prunekit MaskSet": _step_fn(copy.deepcopy(base), x, y, masks)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    ratios: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        for _ in range(5):
            fn()
    for _ in range(rounds):
        this_round = {}
        for k, fn in fns.items():
            ts = []
            for _ in range(steps):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            times[k] += ts
            this_round[k] = statistics.median(ts)
        for k in fns:
            ratios[k].append(this_round[k] / this_round["dense"])
    return ({k: statistics.median(v) for k, v in times.items()}, {k: statistics.median(v) for k, v in ratios.items()})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--models", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {a.threads} thread(s), "
          f"{a.rounds} rounds x {a.steps} steps per variant, interleaved; median step time")
    print("| model | params | dense ms | torch prune ms | prunekit ms | torch prune overhead | prunekit overhead | "
          "prunekit / torch prune |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in a.models:
        t, r = measure(name, a.rounds, a.steps)
        tp, pk = "torch.nn.utils.prune", "prunekit MaskSet"
        n = sum(q.numel() for q in SETUPS[name][0]().parameters())
        print(f"| {name} | {n:,} | {1e3 * t['dense']:.3f} | {1e3 * t[tp]:.3f} | {1e3 * t[pk]:.3f} | "
              f"{100 * (r[tp] - 1):+.1f}% | {100 * (r[pk] - 1):+.1f}% | {r[pk] / r[tp]:.3f} |", flush=True)


if __name__ == "__main__":
    main()
