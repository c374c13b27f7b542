"""Depth: remove whole blocks of a stack of same-shaped residual blocks, least influential first."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..accounting import count_macs
from .plan import keep_blocks_
from .remove import Undo
from .trace import output_tensors, run_with_hooks


def candidate_containers(model: nn.Module, ignored: set[str]) -> list[str]:
    """``ModuleList`` / ``Sequential`` paths whose children (two or more) all share one class."""
    out = []
    for path, m in model.named_modules():
        if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m) >= 2 and path not in ignored:
            if len({type(c) for c in m}) == 1 and not any(path.startswith(i + ".") or i.startswith(path + ".")
                                                          or i == path for i in ignored):
                out.append(path)
    return out


def _first_tensor(x: Any) -> Tensor | None:
    ts = output_tensors(x) if not isinstance(x, Tensor) else [x]
    return ts[0] if ts else None


def block_influence(model: nn.Module, example_inputs: Any, container: str) -> Tensor:
    """Block influence (Men et al. 2024, "ShortGPT", Eq. 1): ``BI_i = 1 - E[cos(x_i, x_{i+1})]`` over
    tokens (or samples); NaN for blocks whose output shape differs from their input (not removable)."""
    blocks = list(model.get_submodule(container))
    bi = torch.full((len(blocks),), float("nan"))
    hooks = []
    for i, b in enumerate(blocks):
        def hook(_m: nn.Module, args: tuple, kwargs: dict, out: Any, i: int = i) -> None:
            x = _first_tensor(args) if args else _first_tensor(list(kwargs.values()))
            y = _first_tensor(out)
            if x is not None and y is not None and x.shape == y.shape and x.is_floating_point():
                xs, ys = _rows(x), _rows(y)
                bi[i] = 1.0 - torch.nn.functional.cosine_similarity(xs, ys, dim=-1).mean()
        hooks.append(b.register_forward_hook(hook, with_kwargs=True))
    run_with_hooks(model, example_inputs, hooks)
    return bi


def _rows(x: Tensor) -> Tensor:
    """Token rows ``(B*T, hidden)`` for sequences, sample rows ``(B, C*H*W)`` for images."""
    return x.reshape(-1, x.shape[-1]).float() if x.dim() == 3 else x.reshape(x.shape[0], -1).float()


def choose_blocks(bi: Tensor, fraction: float) -> list[int]:
    """Indices kept after removing ``floor(fraction * removable)`` lowest-influence blocks."""
    ok = [i for i in range(len(bi)) if not math.isnan(float(bi[i]))]
    k = min(int(math.floor(fraction * len(ok))), len(ok) - 1 if len(ok) == len(bi) else len(ok))
    drop = set(sorted(ok, key=lambda i: float(bi[i]))[:max(k, 0)])
    return [i for i in range(len(bi)) if i not in drop]


def _within(path: str, block: str) -> bool:
    """True if module ``path`` is ``block`` or lies inside it."""
    return path == block or path.startswith(block + ".")


def _block_name(container: str, i: int) -> str:
    return f"{container}.{i}" if container else str(i)


def remove_blocks_(model: nn.Module, example_inputs: Any, fraction: float, containers: list[str],
                   undo: Undo) -> dict[str, list[int]]:
    """Remove the least influential ``fraction`` of removable blocks in each container; returns kept indices."""
    kept: dict[str, list[int]] = {}
    dropped: list[str] = []
    for path in containers:  # pre-order: an outer stack decides before the stacks inside its blocks
        if any(_within(path, b) for b in dropped):
            continue  # inside a block that goes anyway
        bi = block_influence(model, example_inputs, path)
        keep = choose_blocks(bi, fraction)
        if len(keep) < len(bi):
            kept[path] = keep
            dropped += [_block_name(path, i) for i in range(len(bi)) if i not in keep]
    keep_blocks_(model, kept, undo)
    return kept


def remove_blocks_to_budget_(model: nn.Module, example_inputs: Any, keep: float, budget: str,
                             containers: list[str], undo: Undo) -> dict[str, list[int]]:
    """Depth first: remove removable blocks of all ``containers``, lowest block influence first, for as long
    as the model keeps at least the fraction ``keep`` of its MACs (``budget="macs"``) or parameters
    (``"params"``); a block that would cross the budget is skipped and the next, cheaper ones are still
    tried. Every container keeps one block at least. Returns the kept indices per container.

    A removed block takes all its operations with it, so on a CPU the time falls about as its MACs do,
    which width removal of small layers does not achieve (see docs/RESULTS.md, structured latency)."""
    if budget == "macs":
        per = count_macs(model, example_inputs, per_layer=True)
        total = sum(per.values())

        def cost(path: str) -> int:
            return sum(v for k, v in per.items() if k == path or k.startswith(path + "."))
    else:
        total = sum(p.numel() for p in model.parameters())

        def cost(path: str) -> int:
            return sum(p.numel() for p in model.get_submodule(path).parameters())

    ranked, cap = [], {}
    for path in containers:
        bi = block_influence(model, example_inputs, path)
        ok = [i for i in range(len(bi)) if not math.isnan(float(bi[i]))]
        cap[path] = len(ok) - 1 if len(ok) == len(bi) else len(ok)
        ranked += [(float(bi[i]), path, i) for i in ok]
    remaining, dropped = total, {p: set() for p in containers}
    for _, path, i in sorted(ranked):
        name = _block_name(path, i)
        gone = [(p, j) for p, d in dropped.items() for j in d]
        if any(_within(name, _block_name(p, j)) for p, j in gone):
            continue  # already removed with an outer block
        inner = [(p, j) for p, j in gone if _within(_block_name(p, j), name)]
        c = cost(name) - sum(cost(_block_name(p, j)) for p, j in inner)  # those already left the budget
        if len(dropped[path]) < cap[path] and remaining - c >= keep * total:
            for p, j in inner:  # they go with this block: their own entries are moot
                dropped[p].discard(j)
            dropped[path].add(i)
            remaining -= c
    kept = {p: [i for i in range(len(model.get_submodule(p) if p else model)) if i not in d]
            for p, d in dropped.items() if d}
    keep_blocks_(model, kept, undo)
    return kept
