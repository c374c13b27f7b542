"""One layer-by-layer calibration engine for every calibrated solver.

For each transformer block in turn (SparseGPT, Frantar & Alistarh 2023, Sec. 3.4 "sequential"):
run the calibration inputs through it with hooks that accumulate every Linear layer's input
statistics, solve each Linear layer, then run the inputs again through the pruned block so the next
block sees pruned outputs. Only the current block sits on ``device``; the rest stays where it was
(CPU). With ``state_dir`` the state is committed after every block and a new call resumes at the
next block with the same result.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import Config
from ..io import check_writable, load_tensors, save_tensors, write_json
from ..masks import LayerReport, Report, attach
from ..patterns import NM, Pattern
from ..registry import METHODS
from . import solvers as S
from .blocks import (
    BlockInput,
    block_layers,
    capture_inputs,
    find_blocks,
    mask_to_param,
    max_positions,
    move_outside_blocks,
    run_block,
    set_weight_2d,
    to_device,
    weight_2d,
)
from .config import Calibrated, DSnoTConfig, OWLConfig, as_dsnot, as_owl
from .data import Calibration, as_calibration
from .io import pack_mask, unpack_mask
from .stats import LayerStats

log = logging.getLogger(__name__)
STATE_VERSION = 1
STAT_NEEDS = {"gram": "hessian", "input_norms": "norms"}  # registry statistics -> LayerStats needs
Progress = Callable[[str, int, int], None]
Packed = tuple[Tensor, list[int]]  # bit-packed mask and the weight's shape


@dataclass
class CalibrationPlan:
    """Everything the block loop needs, checked before any work: the solver's config and its statistics."""

    solver: str  # the registered calibrated method
    sparsity: float
    pattern: Pattern
    owl: OWLConfig | None
    dsnot: DSnoTConfig | None
    batch_size: int
    error_report: bool
    exclude: list[str]
    max_layer_sparsity: float
    config: Calibrated  # its ``solve`` prunes one layer
    stats: frozenset[str] = frozenset()  # LayerStats the solver needs ("hessian", "norms")


Plan = CalibrationPlan  # the former name (clashed with prunekit.structured.Plan)


def _plan(solver: str | None, config: Any, owl: Any, dsnot: Any) -> CalibrationPlan:
    """The plan of calibrated method ``solver`` (default: ``config``'s own) with ``config``'s fields."""
    name = solver if solver is not None else getattr(config, "type_name", None)
    entry = METHODS.get(name, kind="calibrated")
    if not isinstance(config, Config):
        raise TypeError(f"config must be a prunekit method config (e.g. Wanda(0.5)), got {config!r}")
    cfg = entry.config.from_config(config)
    owl = as_owl(owl) if owl is not None else cfg.owl
    dsnot = as_dsnot(dsnot) if dsnot is not None else cfg.dsnot
    if owl is not None and isinstance(cfg.pattern, NM):
        raise ValueError("owl needs an unstructured pattern: OWL gives each layer its own sparsity")
    return CalibrationPlan(entry.name, float(cfg.sparsity), cfg.pattern, owl, dsnot, cfg.batch_size,
                           cfg.error_report, list(cfg.exclude), cfg.max_layer_sparsity, cfg,
                           frozenset(STAT_NEEDS[k] for k in entry.stats))


def _needs(plan: CalibrationPlan, layer: str) -> frozenset[str]:
    needs = set(plan.stats)
    if plan.owl is not None:
        needs.add("norms")
    if plan.error_report:
        needs.add("hessian")
    if _dsnot_on(plan, layer):
        needs |= {"norms", "moments"}
    return frozenset(needs)


def _dsnot_on(plan: Plan, layer: str) -> bool:
    return plan.dsnot is not None and not any(part in layer.split(".") for part in plan.dsnot.skip)


# ----------------------------------------------------------------------------------------------
# statistics of one block


class _Gatherer:
    """Forward pre-hooks that add each Linear layer's inputs to its ``LayerStats``.

    Layers fed the very same tensor (q/k/v, gate/up) share one accumulator: found on the first
    batch, checked on every later one.
    """

    def __init__(self, layers: dict[str, nn.Module], needs: dict[str, frozenset[str]]) -> None:
        self.layers, self.needs = layers, needs
        self.alias: dict[str, str] = {}
        self.stats: dict[str, LayerStats] = {}
        self.seen: dict[int, tuple[Tensor, str]] = {}
        self.first = True
        self.handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in layers.items()]

    def _hook(self, name: str) -> Callable:
        def hook(_mod: nn.Module, args: tuple) -> None:
            x = args[0]
            hit = self.seen.get(id(x))
            if self.first and hit is not None and self.needs[hit[1]] >= self.needs[name]:
                self.alias[name] = hit[1]
            if name in self.alias:
                if hit is None or hit[1] != self.alias[name]:
                    raise RuntimeError(f"the input of {name} stopped being shared with {self.alias[name]}")
                return
            self.seen.setdefault(id(x), (x, name))
            if name not in self.stats:
                cols = weight_2d(self.layers[name]).shape[1]
                self.stats[name] = LayerStats(cols, self.needs[name], device=x.device)
            self.stats[name].add(x)

        return hook

    def end_batch(self) -> None:
        self.seen.clear()
        self.first = False

    def result(self) -> dict[str, LayerStats]:
        for h in self.handles:
            h.remove()
        missing = [n for n in self.layers if n not in self.stats and n not in self.alias]
        if missing:
            raise RuntimeError(f"layers {missing} never ran during calibration; exclude them (exclude=[...])")
        return {n: self.stats[self.alias.get(n, n)] for n in self.layers}


def gather_block(block: nn.Module, layers: dict[str, nn.Module], needs: dict[str, frozenset[str]],
                 inputs: list[BlockInput], device: torch.device) -> tuple[dict[str, LayerStats], list[Tensor]]:
    """Run the block on every input with statistic hooks; return the statistics and the outputs."""
    g = _Gatherer(layers, needs)
    outs = []
    try:
        with torch.no_grad():
            for inp in inputs:
                outs.append(run_block(block, to_device(inp, device)))
                g.end_batch()
    except BaseException:
        for h in g.handles:
            h.remove()
        raise
    return g.result(), outs


# ----------------------------------------------------------------------------------------------
# solving one layer


def solve_layer(plan: CalibrationPlan, name: str, W: Tensor, st: LayerStats, sparsity: float
                ) -> tuple[Tensor, Tensor, float]:
    """Apply the planned solver (and DSnoT) to one weight ``(out, in)``; return ``(W_new, mask, error)``."""
    W = W.float()
    W_new, mask = plan.config.solve(W, st, sparsity, plan.pattern, name)
    if _dsnot_on(plan, name):
        d = plan.dsnot
        mask = S.dsnot(W, mask, st, plan.pattern, d.max_cycles, d.threshold, d.gamma, d.same_sign)
        W_new, mask = plan.config.solve(W, st, sparsity, plan.pattern, name, mask=mask)  # keep the refined mask
    err = S.reconstruction_error(W, W_new, st.H) if (plan.error_report and st.H is not None) else float("nan")
    return W_new, mask, err


# ----------------------------------------------------------------------------------------------
# OWL


def owl_outlier_ratio(layers: dict[str, nn.Module], stats: dict[str, LayerStats], m: float) -> float:
    """Layer outlier distribution LOD = 100 * #{A > m * mean(A)} / numel(A) over a block's Wanda scores A.

    OWL (Yin et al. 2024, arXiv 2310.05175, Eq. 2), A_ij = |W_ij| * ||X_j||_2 of all its Linear layers.
    """
    scores = {n: S.wanda_scores(weight_2d(mod), stats[n]) for n, mod in layers.items()}
    total = sum(float(a.sum()) for a in scores.values())
    numel = sum(a.numel() for a in scores.values())
    thr = m * total / numel
    return 100.0 * sum(int((a > thr).sum()) for a in scores.values()) / numel


def owl_allocation(blocks: nn.ModuleList, prefix: str, inputs: list[BlockInput], plan: Plan,
                   device: torch.device, progress: Progress | None) -> tuple[dict[str, float], dict[str, float]]:
    """Per-layer sparsities from OWL outlier ratios of the dense model (dense outputs propagate)."""
    from ..allocation import owl as owl_rule

    ratios, sizes, lod = {}, {}, {}
    for i, block in enumerate(blocks):
        _place(block, device)
        layers = block_layers(block, plan.exclude)
        stats, outs = gather_block(block, layers, {n: frozenset({"norms"}) for n in layers}, inputs, device)
        lod[f"{prefix}.{i}"] = owl_outlier_ratio(layers, stats, plan.owl.m)
        for n, mod in layers.items():
            ratios[f"{prefix}.{i}.{n}"] = lod[f"{prefix}.{i}"]
            sizes[f"{prefix}.{i}.{n}"] = mod.weight.numel()
        inputs = [BlockInput(o.to(inp.hidden.device), inp.args, inp.kwargs) for o, inp in zip(outs, inputs)]
        _place(block, _home(block))
        if progress:
            progress("owl", i + 1, len(blocks))
    alloc = owl_rule(ratios, sizes, plan.sparsity, plan.owl.lam, plan.max_layer_sparsity)
    return alloc, lod


# ----------------------------------------------------------------------------------------------
# devices


def _home(block: nn.Module) -> torch.device:
    return getattr(block, "_prunekit_home", next(block.parameters()).device)


def _place(block: nn.Module, device: torch.device) -> None:
    if not hasattr(block, "_prunekit_home"):
        object.__setattr__(block, "_prunekit_home", next(block.parameters()).device)
    if next(block.parameters()).device != device:
        block.to(device)


# ----------------------------------------------------------------------------------------------
# resume state


def _fingerprint(plan: Plan, solver: str, config: Any, calib: Calibration, model: nn.Module) -> str:
    h = hashlib.sha256()
    cfg = config.to_json() if hasattr(config, "to_json") else repr(config)
    h.update(json.dumps([solver, cfg, repr(plan)], sort_keys=True).encode())
    h.update(calib.input_ids.numpy().tobytes())
    for n, p in model.named_parameters():  # names, shapes and a strided sample of the values
        h.update(f"{n}{tuple(p.shape)}{p.dtype}".encode())
        flat = p.detach().reshape(-1)
        h.update(flat[:: max(1, flat.numel() // 256)][:256].float().cpu().numpy().tobytes())
    return h.hexdigest()


class _State:
    """Files in ``state_dir``: ``state.json`` (the commit point), ``block_<i>.safetensors`` (pruned weights
    and masks of block i), ``hidden_<k>.safetensors`` (inputs of block k)."""

    def __init__(self, root: Path | None, fingerprint: str) -> None:
        self.root, self.fp = root, fingerprint
        self.data: dict[str, Any] = {"version": STATE_VERSION, "fingerprint": fingerprint, "next_block": 0,
                                     "layers": [], "blocks": [], "owl": None}
        if root is not None and (root / "state.json").exists():
            old = json.loads((root / "state.json").read_text())
            if old.get("fingerprint") == fingerprint and old.get("version") == STATE_VERSION:
                self.data = old
            else:
                log.warning("state in %s is for another run; starting over", root)

    @property
    def next_block(self) -> int:
        return int(self.data["next_block"])

    def load_block(self, i: int) -> dict[str, Tensor]:
        tensors, _ = load_tensors(self.root / f"block_{i}.safetensors", "pruning state file")
        return tensors

    def load_hidden(self, k: int, n: int) -> list[Tensor]:
        tensors, _ = load_tensors(self.root / f"hidden_{k}.safetensors", "pruning state file")
        return [tensors[f"h{j}"] for j in range(n)]

    def commit(self, i: int, weights: dict[str, Tensor], hidden: list[Tensor], layers: list[dict],
               block_info: dict) -> None:
        self.data["layers"] += layers
        self.data["blocks"].append(block_info)
        self.data["next_block"] = i + 1
        if self.root is None:
            return
        save_tensors(self.root / f"block_{i}.safetensors", weights)
        save_tensors(self.root / f"hidden_{i + 1}.safetensors", {f"h{j}": h for j, h in enumerate(hidden)})
        write_json(self.root / "state.json", self.data)
        (self.root / f"hidden_{i}.safetensors").unlink(missing_ok=True)

    def save(self) -> None:
        if self.root is not None:
            write_json(self.root / "state.json", self.data)


# ----------------------------------------------------------------------------------------------
# the engine


def _check_inputs(model: nn.Module, calib: Calibration, blocks: nn.ModuleList, prefix: str, plan: Plan) -> None:
    limit = max_positions(model)
    if limit is not None and calib.seq_len > limit:
        raise ValueError(f"calibration seq_len={calib.seq_len} is beyond the model's maximum sequence length {limit}")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(vocab, int) and int(calib.input_ids.max()) >= vocab:
        raise ValueError(f"calibration token id {int(calib.input_ids.max())} is outside the vocabulary ({vocab})")
    n_layers = 0
    for i, block in enumerate(blocks):
        for n, mod in block_layers(block, plan.exclude).items():
            n_layers += 1
            W = weight_2d(mod)
            if isinstance(plan.pattern, NM) and W.shape[1] % plan.pattern.m:
                raise ValueError(f"pattern {plan.pattern} needs the input dimension of {prefix}.{i}.{n} to be a "
                                 f"multiple of {plan.pattern.m}, but it is {W.shape[1]}")
            if not torch.isfinite(W).all():
                raise ValueError(f"weight {prefix}.{i}.{n} contains NaN or Inf values")
    if n_layers == 0:
        raise ValueError("the transformer blocks hold no Linear layer to prune (check exclude=...)")


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


def pin_malloc_thresholds(nbytes: int = 128 * 1024) -> bool:
    """glibc only: serve allocations above ``nbytes`` with mmap and trim the heap above ``nbytes`` free.

    By default glibc raises its mmap threshold after each large free (up to 32 MiB), so the 16-64 MB
    per-layer weight copies of a 1B model come from the heap afterwards and their freed space stays
    fragmented in the process. Fixing both thresholds (as ``MALLOC_MMAP_THRESHOLD_`` /
    ``MALLOC_TRIM_THRESHOLD_`` would) gives that memory back to the OS. Process-wide; returns whether
    it was applied (False off Linux/glibc).
    """
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, int(nbytes))) and bool(libc.mallopt(M_TRIM_THRESHOLD, int(nbytes)))
    except (OSError, AttributeError):
        return False


def prune_blocks(model: nn.Module, solver: str | None, config: Any, calibration: Any, *,
                 device: torch.device | str | None = None, state_dir: str | Path | None = None,
                 owl: Any = None, dsnot: Any = None, progress: Progress | None = None,
                 on_block_end: Callable[[int, dict], None] | None = None, attach_masks: bool = True,
                 pin_malloc: bool = True) -> Report:
    """Prune every Linear layer of ``model``'s transformer blocks with ``solver``, block by block, in place.

    ``solver`` is a calibrated method of ``METHODS`` (``None``: ``config``'s own); ``config`` gives
    ``sparsity``, ``pattern`` and the solver options (``SparseGPT``, ``Wanda``, ``prunekit.Magnitude``
    ...), turned into the solver's config by ``from_config``; ``owl`` / ``dsnot`` override its add-ons. Returns the
    report (per-layer sparsity, target, relative reconstruction error, time) with masks attached;
    with ``attach_masks=False`` the pruned weights are plain zeros and the masks stay bit-packed in
    ``report.extra["packed_masks"]`` (``{name: (uint8 bits, shape)}``), so a large model needs no
    extra byte per weight. ``pin_malloc``: on CPU with glibc, fix malloc's mmap and trim thresholds
    (:func:`pin_malloc_thresholds`, process-wide) so that the per-layer float32 copies are returned to
    the OS when freed instead of growing a fragmented heap (measured on a 1.1B LLaMA, SparseGPT: peak
    RSS 5.18 -> 4.95 GiB, about 4% slower; docs/RESULTS.md).
    """
    t0 = time.perf_counter()
    plan = _plan(solver, config, owl, dsnot)
    calib = as_calibration(calibration)
    prefix, blocks = find_blocks(model)
    _check_inputs(model, calib, blocks, prefix, plan)
    root = None if state_dir is None else check_writable(state_dir, "state_dir")
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    home = next(blocks[0].parameters()).device
    dev = torch.device(device) if device is not None else home
    state = _State(root, _fingerprint(plan, solver, config, calib, model))
    if pin_malloc and dev.type == "cpu":
        pin_malloc_thresholds()
    was_training = model.training
    model.eval()
    move_outside_blocks(model, blocks, dev)
    store = torch.device("cpu")
    inputs = capture_inputs(model, blocks[0], calib.batches(plan.batch_size), dev, store)
    if plan.owl is not None and state.data["owl"] is None:
        alloc, lod = owl_allocation(blocks, prefix, inputs, plan, dev, progress)
        state.data["owl"] = {"allocation": alloc, "lod": lod}
        state.save()
    alloc = (state.data["owl"] or {}).get("allocation") or {}
    masks = _restore(state, blocks, prefix, plan)
    if state.next_block > 0:
        hidden = state.load_hidden(state.next_block, len(inputs))
        inputs = [BlockInput(h, inp.args, inp.kwargs) for h, inp in zip(hidden, inputs)]
    for i in range(state.next_block, len(blocks)):
        inputs = _prune_block(i, blocks[i], prefix, plan, alloc, inputs, dev, state, masks)
        if progress:
            progress("prune", i + 1, len(blocks))
        if on_block_end:
            on_block_end(i, state.data["blocks"][-1])
    move_outside_blocks(model, blocks, home)
    model.train(was_training)
    return _report(model, plan, config, solver, calib, state, masks, time.perf_counter() - t0, attach_masks)


def _restore(state: _State, blocks: nn.ModuleList, prefix: str, plan: Plan) -> dict[str, Packed]:
    """Load the pruned weights and (bit-packed) masks of the blocks already done (resume)."""
    masks: dict[str, Packed] = {}
    for i in range(state.next_block):
        saved = state.load_block(i)
        for n, mod in block_layers(blocks[i], plan.exclude).items():
            with torch.no_grad():
                mod.weight.copy_(saved[f"{n}.weight"].to(mod.weight.device, mod.weight.dtype))
            masks[f"{prefix}.{i}.{n}.weight"] = (saved[f"{n}.mask"], list(mod.weight.shape))
    return masks


def _prune_block(i: int, block: nn.Module, prefix: str, plan: Plan, alloc: dict[str, float],
                 inputs: list[BlockInput], dev: torch.device, state: _State, masks: dict[str, Packed]
                 ) -> list[BlockInput]:
    """Gather, solve, re-run one block; commit its state; return the next block's inputs."""
    tb = time.perf_counter()
    _place(block, dev)
    layers = block_layers(block, plan.exclude)
    needs = {n: _needs(plan, f"{prefix}.{i}.{n}") for n in layers}
    stats, dense_outs = gather_block(block, layers, needs, inputs, dev)
    rows, saved = [], {}
    for n, mod in layers.items():
        full = f"{prefix}.{i}.{n}"
        t1 = time.perf_counter()
        target = float(alloc.get(f"{full}", plan.sparsity))
        W_new, mask, err = solve_layer(plan, full, weight_2d(mod), stats.pop(n), target)  # frees each H once used
        set_weight_2d(mod, W_new)
        bits = pack_mask(mask_to_param(mod, mask))  # 1 bit per weight: masks of all layers stay small
        masks[f"{full}.weight"] = (bits, list(mod.weight.shape))
        saved[f"{n}.weight"], saved[f"{n}.mask"] = mod.weight.detach().cpu(), bits
        rows.append({"name": f"{full}.weight", "shape": list(mod.weight.shape), "numel": mod.weight.numel(),
                     "sparsity": 1.0 - float(mask.sum()) / mask.numel(), "target": target,
                     "seconds": time.perf_counter() - t1, "error": None if err != err else err})
    del stats
    with torch.no_grad():
        outs = [run_block(block, to_device(inp, dev)) for inp in inputs]
    num = sum(float(((o - d) ** 2).sum()) for o, d in zip(outs, dense_outs))
    den = sum(float((d**2).sum()) for d in dense_outs)
    _place(block, _home(block))
    nxt = [BlockInput(o.to(inp.hidden.device), inp.args, inp.kwargs) for o, inp in zip(outs, inputs)]
    info = {"block": f"{prefix}.{i}", "output_error": num / den if den > 0 else 0.0,
            "seconds": time.perf_counter() - tb}
    state.commit(i, saved, [x.hidden for x in nxt], rows, info)
    log.info("block %s.%d pruned: output error %.4g in %.2fs", prefix, i, info["output_error"], info["seconds"])
    return nxt


def _report(model: nn.Module, plan: Plan, config: Any, solver: str, calib: Calibration, state: _State,
            masks: dict[str, Packed], seconds: float, attach_masks: bool) -> Report:
    layers = [LayerReport(**r) for r in state.data["layers"]]
    method = config.to_dict() if hasattr(config, "to_dict") else {"type": solver}
    method = {**method, "solver": plan.solver, "owl": None if plan.owl is None else vars(plan.owl),
              "dsnot": None if plan.dsnot is None else vars(plan.dsnot)}
    extra = {"blocks": state.data["blocks"], "calibration": calib.info, "owl": state.data["owl"]}
    if not attach_masks:
        extra["packed_masks"] = masks
        return Report(method, layers, seconds, None, extra)
    ms = attach(model, {k: unpack_mask(bits, shape) for k, (bits, shape) in masks.items()})
    return Report(method, layers, seconds, ms, extra)


def clear_state(state_dir: str | Path) -> None:
    """Delete a finished run's resume files (``state.json``, ``block_*``, ``hidden_*``)."""
    root = Path(state_dir)
    for f in list(root.glob("block_*.safetensors")) + list(root.glob("hidden_*.safetensors")) + [root / "state.json"]:
        f.unlink(missing_ok=True)
    if root.exists() and not any(root.iterdir()):
        shutil.rmtree(root)
