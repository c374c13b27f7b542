"""One layer-by-layer calibration engine for every calibrated solver.

For each transformer block in turn (SparseGPT, Frantar & Alistarh 2023, Sec. 3.4 "sequential"):
run the calibration inputs through it with hooks that accumulate every Linear layer's input
statistics, solve each Linear layer, then run the inputs again through the pruned block so the next
block sees pruned outputs. Only the current block sits on ``device``; the rest stays where it was
(CPU). With ``state_dir`` the state is committed after every block and a new call resumes at the
next block with the same result.

Work the result does not need is skipped: a statistics pass ends once the block's last Linear
layer has recorded its input (the dense output beyond it is used only for the block's reported
output error, which is measured on the first ``ERROR_SEQUENCES`` calibration sequences and says so:
``output_error_sequences``), and the last block re-runs those sequences only. The statistics, and
so the masks, are those of full passes.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import Config
from ..io import check_writable, load_tensors, remove_owned, save_tensors, write_json
from ..layers import Ledger
from ..masks import LayerReport, Report, attach
from ..patterns import NM, Pattern
from ..registry import METHODS
from . import solvers as S
from .blocks import (
    BlockInput,
    Stack,
    StackInputs,
    capture_stack,
    find_stacks,
    max_positions,
    move_outside_blocks,
    offloaded,
    run_block,
    stack_runner,
    to_device,
    weight_2d,
)
from .config import Calibrated, DSnoTConfig, OWLConfig, as_dsnot, as_owl
from .data import Calibration, as_calibration
from .experts import ExpertGatherer
from .io import pack_mask, unpack_mask
from .stats import LayerStats
from .targets import ExpertTarget, LinearTarget, Target, block_targets, calibration_ledger, expert_groups, param_name

log = logging.getLogger(__name__)
STATE_VERSION = 2  # 2: blocks of every stack, fused experts, elapsed seconds
STORE = torch.device("cpu")  # where captured block inputs are kept
STAT_NEEDS = {"gram": "hessian", "input_norms": "norms"}  # registry statistics -> LayerStats needs
Progress = Callable[[str, int, int], None]
Packed = tuple[Tensor, list[int]]  # bit-packed mask and the weight's shape
ERROR_SEQUENCES = 8  # a block's relative output error is measured on the first batches holding this many


@dataclass
class CalibrationPlan:
    """Everything the block loop needs, checked before any work: the solver's config and its statistics."""

    solver: str  # the registered calibrated method
    sparsity: float
    pattern: Pattern
    owl: OWLConfig | None
    dsnot: DSnoTConfig | None
    batch_size: int
    error_report: bool | None  # None: where the solver's statistics hold H anyway
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
    if plan.error_report is True:
        needs.add("hessian")
    if _dsnot_on(plan, layer):
        needs |= {"norms", "moments"}
    return frozenset(needs)


def _dsnot_on(plan: Plan, layer: str) -> bool:
    return plan.dsnot is not None and not any(part in layer.split(".") for part in plan.dsnot.skip)


# ----------------------------------------------------------------------------------------------
# statistics of one block


class _BlockDone(Exception):
    """Raised by the last statistic hook of a block pass whose output no one needs."""


class _Gatherer:
    """Forward pre-hooks that add each Linear layer's inputs to its ``LayerStats``.

    Layers fed the very same tensor (q/k/v, gate/up) share one accumulator: found on the first
    batch, checked on every later one. With ``early_exit`` the first batch also records the order
    the hooks fire in; if every layer ran exactly once there (no routed experts), later batches end
    the block's forward pass right after the last layer's statistics, once every layer has been
    seen in that batch: what follows (the last projection's product, the residual, a final norm)
    changes no statistic.
    """

    def __init__(self, layers: dict[str, nn.Module], needs: dict[str, frozenset[str]], early_exit: bool = False
                 ) -> None:
        self.layers, self.needs = layers, needs
        self.alias: dict[str, str] = {}
        self.stats: dict[str, LayerStats] = {}
        self.seen: dict[int, tuple[Tensor, str]] = {}
        self.first = True
        self.early_exit = early_exit and not any("experts" in n.split(".") for n in layers)
        self.calls: dict[str, int] = {}
        self.order: list[str] = []
        self.stop_after: str | None = None
        self.may_exit = False  # set per batch by the caller: may this pass end early?
        self.handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in layers.items()]

    def _hook(self, name: str) -> Callable:
        def hook(_mod: nn.Module, args: tuple) -> None:
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.first:
                self.order.append(name)
            self._add(name, args[0])
            if self.may_exit and name == self.stop_after and all(self.calls.get(n, 0) == 1 for n in self.layers):
                raise _BlockDone

        return hook

    def _add(self, name: str, x: Tensor) -> None:
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

    def end_batch(self) -> None:
        if self.first and self.early_exit and self.order and sorted(self.order) == sorted(self.layers):
            self.stop_after = self.order[-1]
        self.seen.clear()
        self.calls.clear()
        self.first = False

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def result(self) -> dict[str, LayerStats]:
        """The statistics of every layer; a Linear expert that no token reached gets empty ones."""
        self.remove()
        missing = [n for n in self.layers if n not in self.stats and n not in self.alias]
        unrouted = [n for n in missing if "experts" in n.split(".")]
        if len(unrouted) < len(missing):
            raise RuntimeError(f"layers {[n for n in missing if n not in unrouted]} never ran during calibration; "
                               "exclude them (exclude=[...])")
        for n in unrouted:
            self.stats[n] = LayerStats(weight_2d(self.layers[n]).shape[1], self.needs[n])
        return {n: self.stats[self.alias.get(n, n)] for n in self.layers}


def gather_block(block: nn.Module, targets: dict[str, Any], needs: dict[str, frozenset[str]],
                 inputs: list[BlockInput], device: torch.device, keep: int | None = None
                 ) -> tuple[dict[str, LayerStats], list[Tensor]]:
    """Run the block on every input with statistic hooks; return the statistics and the outputs.

    ``targets`` are Linear modules or ``targets.Target`` objects (fused expert matrices get the
    statistics of the tokens routed to their expert, :mod:`prunekit.calibrate.experts`).
    ``keep=None`` returns every input's output; ``keep=k`` returns the first ``max(k, 1)`` only and
    ends the other passes early where the block allows it (``_Gatherer``): same statistics, less work.
    """
    linear = {n: (t.module if isinstance(t, LinearTarget) else t) for n, t in targets.items()
              if not isinstance(t, ExpertTarget)}
    fused = any(isinstance(t, ExpertTarget) for t in targets.values())
    g = _Gatherer(linear, needs, early_exit=keep is not None and not fused)
    eg = ExpertGatherer(targets, needs)
    full = len(inputs) if keep is None else max(keep, 1)
    outs = []
    try:
        with torch.no_grad():
            for j, inp in enumerate(inputs):
                g.may_exit = j >= full
                try:
                    out = run_block(block, to_device(inp, device))
                except _BlockDone:
                    out = None
                if j < full:
                    if out is None:
                        raise RuntimeError("internal: a block pass whose output is kept ended early")
                    outs.append(out)
                g.end_batch()
    except BaseException:
        g.remove()
        raise
    finally:
        eg.remove()
    return {**g.result(), **eg.stats}, outs


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
    report = plan.error_report is not False and st.H is not None  # None: only where H was gathered anyway
    err = S.reconstruction_error(W, W_new, st.H) if report else float("nan")
    return W_new, mask, err


def solve_target(plan: Plan, name: str, W: Tensor, st: LayerStats, sparsity: float
                 ) -> tuple[Tensor, Tensor, float, bool]:
    """``solve_layer``; or, for a matrix that got no calibration token (an MoE expert the router never
    chose), magnitude, stated by the returned ``fell_back`` flag when the plan asked for more."""
    if st.n_tokens > 0:
        return (*solve_layer(plan, name, W, st, sparsity), False)
    W_new, mask = S.magnitude(W.float(), None, sparsity, plan.pattern, scope=_magnitude_scope(plan), name=name)
    return W_new, mask, float("nan"), _uses_activations(plan) or _dsnot_on(plan, name)


def _uses_activations(plan: Plan) -> bool:
    """Whether the solver reads calibration statistics (Wanda, SparseGPT), not only the weights (magnitude)."""
    stats = getattr(plan, "stats", None)  # a plan built from the method registry declares them
    return bool(stats) if stats is not None else plan.solver not in ("magnitude", "magnitude_row")


def _magnitude_scope(plan: Plan) -> str:
    row = plan.solver == "magnitude_row" or getattr(getattr(plan, "config", None), "scope", "layer") == "row"
    return "row" if row else "layer"


# ----------------------------------------------------------------------------------------------
# OWL


def owl_outlier_ratio(layers: dict[str, Any], stats: dict[str, LayerStats], m: float) -> float:
    """Layer outlier distribution LOD = 100 * #{A > m * mean(A)} / numel(A) over a block's Wanda scores A.

    OWL (Yin et al. 2024, arXiv 2310.05175, Eq. 2), A_ij = |W_ij| * ||X_j||_2 of all its Linear layers
    (and expert matrices that received tokens).
    """
    scores = {n: S.wanda_scores(_weight(t), stats[n]) for n, t in layers.items() if stats[n].n_tokens > 0}
    total = sum(float(a.sum()) for a in scores.values())
    numel = sum(a.numel() for a in scores.values())
    if numel == 0:  # no layer of the block saw a token (every expert unrouted)
        return 0.0
    thr = m * total / numel
    return 100.0 * sum(int((a > thr).sum()) for a in scores.values()) / numel


def _weight(t: Any) -> Tensor:
    return t.weight() if isinstance(t, (LinearTarget, ExpertTarget)) else weight_2d(t)


def owl_allocation(model: nn.Module, stacks: list[Stack], led: Ledger, batches: list[Tensor], plan: Plan,
                   device: torch.device, progress: Progress | None) -> tuple[dict[str, float], dict[str, float]]:
    """Per-layer sparsities from OWL outlier ratios of the dense model (dense outputs propagate)."""
    from ..allocation import owl as owl_rule

    ratios, sizes, lod = {}, {}, {}
    total, done = sum(len(s.blocks) for s in stacks), 0
    for k, st in enumerate(stacks):
        cap = _capture(model, stacks, k, batches, device)
        inputs = cap.first
        for i, block in enumerate(st.blocks):
            _place(block, device)
            name = f"{st.prefix}.{i}"
            targets = block_targets(led, name, block)
            stats, outs = gather_block(block, targets, {n: frozenset({"norms"}) for n in targets}, inputs, device)
            lod[name] = owl_outlier_ratio(targets, stats, plan.owl.m)
            for n, t in targets.items():
                ratios[f"{name}.{n}"] = lod[name]
                sizes[f"{name}.{n}"] = _weight(t).numel()
            inputs = cap.for_block(i + 1, [o.to(STORE) for o in outs]) if i + 1 < len(st.blocks) else []
            _place(block, _home(block))
            done += 1
            if progress:
                progress("owl", done, total)
    alloc = owl_rule(ratios, sizes, plan.sparsity, plan.owl.lam, plan.max_layer_sparsity)
    return alloc, lod


# ----------------------------------------------------------------------------------------------
# devices


def _capture(model: nn.Module, stacks: list[Stack], k: int, batches: list[Tensor], dev: torch.device) -> StackInputs:
    """The inputs of every block of stack ``k``; the other stacks' blocks (a pruned encoder feeding a
    decoder) visit ``dev`` one at a time while the model runs."""
    others = nn.ModuleList([b for j, s in enumerate(stacks) if j != k for b in s.blocks])
    with offloaded(others, dev):
        return capture_stack(stack_runner(model, stacks, k), stacks[k].blocks, batches, dev, STORE)


def _home(block: nn.Module) -> torch.device:
    return getattr(block, "_prunekit_home", next(block.parameters()).device)


def _place(block: nn.Module, device: torch.device) -> None:
    if not hasattr(block, "_prunekit_home"):
        object.__setattr__(block, "_prunekit_home", next(block.parameters()).device)
    if next(block.parameters()).device != device:
        block.to(device)


# ----------------------------------------------------------------------------------------------
# resume state


def tensor_digest(model: nn.Module) -> str:
    """sha256 over the name, shape, dtype and every byte of every parameter and buffer of ``model``.

    Streams each tensor 16M entries at a time (0.7 s for 0.54 GB of bf16 on the 2-core dev machine), so
    a change to any value, not only to a sample of them, is seen.
    """
    h = hashlib.sha256()
    seen: set[int] = set()
    for n, t in [*model.named_parameters(), *model.named_buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        h.update(f"{n}{tuple(t.shape)}{t.dtype}".encode())
        flat = t.detach().reshape(-1)
        for c in flat.split(1 << 24):  # 16M entries at a time: no full copy of a large tensor off its device
            h.update(c.cpu().contiguous().view(torch.uint8).numpy())  # the buffer itself, no bytes copy
    return h.hexdigest()


def _fingerprint(plan: Plan, solver: str, config: Any, calib: Calibration, model: nn.Module) -> str:
    """A digest of everything the result depends on: arguments, calibration ids and the whole model."""
    h = hashlib.sha256()
    cfg = config.to_json() if hasattr(config, "to_json") else repr(config)
    h.update(json.dumps([solver, cfg, repr(plan)], sort_keys=True).encode())
    h.update(calib.input_ids.numpy().tobytes())
    h.update(tensor_digest(model).encode())
    return h.hexdigest()


class _State:
    """Files in ``state_dir``: ``state.json`` (the commit point), ``block_<i>.safetensors`` (pruned weights
    and masks of block i, counted over all stacks), ``hidden_<k>.safetensors`` (inputs of block k).

    ``elapsed`` sums the seconds of every run that worked on this state, interrupted ones included.
    """

    def __init__(self, root: Path | None, fingerprint: str) -> None:
        self.root, self.fp = root, fingerprint
        self.data: dict[str, Any] = {"version": STATE_VERSION, "fingerprint": fingerprint, "next_block": 0,
                                     "layers": [], "blocks": [], "owl": None, "experts": {}, "elapsed": 0.0,
                                     "runs": 0}
        if root is not None and (root / "state.json").exists():
            old = json.loads((root / "state.json").read_text())
            if old.get("fingerprint") == fingerprint and old.get("version") == STATE_VERSION:
                self.data = old
                log.info("resuming from %s at block %d", root, self.next_block)
            else:
                log.warning("the resume state in %s was made from another source model, calibration set or "
                            "arguments (or another prunekit state version); starting over", root)
        self.prior = float(self.data["elapsed"])
        self.data["runs"] = int(self.data["runs"]) + 1

    @property
    def next_block(self) -> int:
        return int(self.data["next_block"])

    def load_block(self, i: int) -> dict[str, Tensor]:
        tensors, _ = load_tensors(self.root / f"block_{i}.safetensors", "pruning state file")
        return tensors

    def load_hidden(self, k: int, n: int) -> list[Tensor]:
        tensors, _ = load_tensors(self.root / f"hidden_{k}.safetensors", "pruning state file")
        return [tensors[f"h{j}"] for j in range(n)]

    def commit(self, i: int, weights: dict[str, Tensor], hidden: list[Tensor] | None, layers: list[dict],
               block_info: dict, run_seconds: float) -> None:
        self.data["layers"] += layers
        self.data["blocks"].append(block_info)
        self.data["next_block"] = i + 1
        self.data["elapsed"] = self.prior + run_seconds
        if self.root is None:
            return
        save_tensors(self.root / f"block_{i}.safetensors", weights)
        if hidden is not None:
            save_tensors(self.root / f"hidden_{i + 1}.safetensors", {f"h{j}": h for j, h in enumerate(hidden)})
        write_json(self.root / "state.json", self.data)
        remove_owned([self.root / f"hidden_{i}.safetensors"])  # written by this run at block i - 1

    def save(self, run_seconds: float | None = None) -> None:
        if run_seconds is not None:
            self.data["elapsed"] = self.prior + run_seconds
        if self.root is not None:
            write_json(self.root / "state.json", self.data)


# ----------------------------------------------------------------------------------------------
# the engine


def _check_inputs(model: nn.Module, calib: Calibration, stacks: list[Stack], led: Ledger, plan: Plan) -> None:
    limit = max_positions(model)
    if limit is not None and calib.seq_len > limit:
        raise ValueError(f"calibration seq_len={calib.seq_len} is beyond the model's maximum sequence length {limit}")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(vocab, int) and int(calib.input_ids.max()) >= vocab:
        raise ValueError(f"calibration token id {int(calib.input_ids.max())} is outside the vocabulary ({vocab})")
    n_layers = 0
    for st in stacks:
        for i, block in enumerate(st.blocks):
            for n, t in block_targets(led, f"{st.prefix}.{i}", block).items():
                n_layers += 1
                W = t.weight()
                if isinstance(plan.pattern, NM) and W.shape[1] % plan.pattern.m:
                    raise ValueError(f"pattern {plan.pattern} needs the input dimension of {st.prefix}.{i}.{n} to be "
                                     f"a multiple of {plan.pattern.m}, but it is {W.shape[1]}")
                if not torch.isfinite(W).all():
                    raise ValueError(f"weight {st.prefix}.{i}.{n} contains NaN or Inf values")
    if n_layers == 0:
        raise ValueError("the transformer blocks hold no Linear layer to prune (check exclude=...)")


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)
SOLVE_MMAP_BYTES = 128 * 1024  # per-layer copies of the solve: served by mmap, returned when freed
FORWARD_MMAP_BYTES = 32 * 1024**2  # glibc's largest mmap threshold (DEFAULT_MMAP_THRESHOLD_MAX, 64-bit)
FORWARD_TRIM_BYTES = 1024**3


@functools.cache
def _glibc() -> Any:
    """glibc as a ``ctypes`` library (loaded once), or None off Linux / glibc."""
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def pin_malloc_thresholds(nbytes: int = SOLVE_MMAP_BYTES, trim_bytes: int | None = None) -> bool:
    """glibc only: serve allocations above ``nbytes`` with mmap and trim the heap above ``trim_bytes`` free
    (default ``nbytes``).

    By default glibc raises its mmap threshold after each large free (up to 32 MiB), so the 16-64 MB
    per-layer weight copies of a 1B model come from the heap afterwards and their freed space stays
    fragmented in the process. Fixing both thresholds (as ``MALLOC_MMAP_THRESHOLD_`` /
    ``MALLOC_TRIM_THRESHOLD_`` would) gives that memory back to the OS. Process-wide; returns whether
    it was applied (False off Linux/glibc).
    """
    libc = _glibc()
    if libc is None:
        return False
    trim = nbytes if trim_bytes is None else trim_bytes
    return bool(libc.mallopt(M_MMAP_THRESHOLD, int(nbytes))) and bool(libc.mallopt(M_TRIM_THRESHOLD, int(trim)))


@contextmanager
def forward_allocations(active: bool) -> Iterator[None]:
    """Inside: keep the forward passes' activation buffers (up to 32 MiB each) in the heap, reused batch after
    batch; on exit: give the free heap back to the OS (``malloc_trim``) and pin the solve's 128 KiB thresholds.

    With the solve's thresholds during the forward passes, every activation above 128 KiB was a fresh mmap,
    zero-filled page by page on first touch and unmapped when freed: on MiniLM, Wanda, 128 x 256 tokens,
    3.44M minor page faults and 7.8 s of system time in a 42 s run, against 0.70M and 2.6 s with these
    (docs/results/llm.md). No-op unless ``active`` (``pin_malloc`` on a CPU run) and glibc.
    """
    if not active or not pin_malloc_thresholds(FORWARD_MMAP_BYTES, FORWARD_TRIM_BYTES):
        yield
        return
    try:
        yield
    finally:
        _glibc().malloc_trim(0)
        pin_malloc_thresholds()


@dataclass
class _Run:
    """What one call of ``prune_blocks`` carries through the block loop."""

    model: nn.Module
    stacks: list[Stack]
    ledger: Ledger
    plan: Plan
    alloc: dict[str, float]
    batches: list[Tensor]
    dev: torch.device
    state: _State
    masks: dict[str, Packed]
    t0: float
    progress: Progress | None
    on_block_end: Callable[[int, dict], None] | None
    pin: bool = False  # glibc thresholds pinned for the solve, lifted for the forward passes

    @property
    def total(self) -> int:
        return sum(len(s.blocks) for s in self.stacks)


def prune_blocks(model: nn.Module, solver: str | None, config: Any, calibration: Any, *,
                 device: torch.device | str | None = None, state_dir: str | Path | None = None,
                 owl: Any = None, dsnot: Any = None, progress: Progress | None = None,
                 on_block_end: Callable[[int, dict], None] | None = None, attach_masks: bool = True,
                 pin_malloc: bool = True) -> Report:
    """Prune every Linear layer and fused expert matrix of ``model``'s transformer blocks, block by block, in place.

    ``solver`` is a calibrated method of ``METHODS`` (``None``: ``config``'s own); ``config`` gives
    ``sparsity``, ``pattern`` and the solver options, turned into the solver's config by ``from_config``;
    ``owl`` / ``dsnot`` override its add-ons. An
    encoder-decoder model (T5, BART) is calibrated through both stacks: the encoder's blocks on the
    calibration ids, then the decoder's on the shifted ids with the pruned encoder's output as
    cross-attention input. MoE experts stored as fused 3-D parameters are pruned per expert matrix
    from the tokens routed to each expert; an expert no token reaches is pruned by magnitude and
    listed in ``report.extra["experts"]`` (a logged warning too). Routers and one-output gates are
    kept. Returns the report (per-layer sparsity, target, relative reconstruction error, time,
    ``extra["ledger"]``: every tensor pruned or kept and why) with masks attached; with
    ``attach_masks=False`` the pruned weights are plain zeros and the masks stay bit-packed in
    ``report.extra["packed_masks"]`` (``{name: (uint8 bits, shape)}``), so a large model needs no
    extra byte per weight. With ``state_dir`` a later call resumes after the last finished block,
    when the model (every byte of every tensor), calibration ids and arguments are the same;
    ``report.seconds`` is then the sum over all runs. ``pin_malloc``: on CPU with glibc, fix
    malloc's mmap and trim thresholds at 128 KiB for the solves (:func:`pin_malloc_thresholds`,
    process-wide) so that the per-layer float32 copies are returned to the OS when freed instead of
    growing a fragmented heap (measured on a 1.1B LLaMA, SparseGPT: peak RSS 5.18 -> 5.01 GiB;
    docs/RESULTS.md), and lift them during the forward passes (:func:`forward_allocations`), whose
    activation buffers are reused batch after batch.
    """
    t0 = time.perf_counter()
    plan = _plan(solver, config, owl, dsnot)
    calib = as_calibration(calibration)
    stacks = find_stacks(model)
    led = calibration_ledger(model, stacks, plan.exclude)
    _check_inputs(model, calib, stacks, led, plan)
    root = None if state_dir is None else check_writable(state_dir, "state_dir")
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    home = next(stacks[0].blocks[0].parameters()).device
    dev = torch.device(device) if device is not None else home
    state = _State(root, _fingerprint(plan, solver, config, calib, model) if root is not None else "")
    pin = pin_malloc and dev.type == "cpu" and pin_malloc_thresholds()
    was_training = model.training
    model.eval()
    every_block = nn.ModuleList([b for s in stacks for b in s.blocks])
    move_outside_blocks(model, every_block, dev)
    try:
        run = _Run(model, stacks, led, plan, {}, calib.batches(plan.batch_size), dev, state, {}, t0, progress,
                   on_block_end, pin)
        if plan.owl is not None and state.data["owl"] is None:
            with forward_allocations(pin):
                alloc, lod = owl_allocation(model, stacks, led, run.batches, plan, dev, progress)
            state.data["owl"] = {"allocation": alloc, "lod": lod}
            state.save(time.perf_counter() - t0)
        run.alloc = (state.data["owl"] or {}).get("allocation") or {}
        run.masks = _restore(state, stacks, led)
        first = 0
        for k, st in enumerate(stacks):
            if state.next_block < first + len(st.blocks):
                _prune_stack(run, k, first)
            first += len(st.blocks)
    except BaseException:
        state.save(time.perf_counter() - t0)  # the seconds of an interrupted run count in the resumed one's total
        raise
    finally:
        move_outside_blocks(model, every_block, home)
        model.train(was_training)
    state.save(time.perf_counter() - t0)
    return _report(model, run, config, solver, calib, attach_masks)


def _prune_stack(run: _Run, k: int, first: int) -> None:
    """Capture the inputs of stack ``k`` and prune its blocks (global index ``first`` + i) from ``next_block`` on."""
    st, state = run.stacks[k], run.state
    with forward_allocations(run.pin):
        cap = _capture(run.model, run.stacks, k, run.batches, run.dev)
    start = max(state.next_block - first, 0)
    inputs = cap.first
    if start > 0:
        inputs = cap.for_block(start, state.load_hidden(first + start, len(cap.first)))
    for i in range(start, len(st.blocks)):
        last = i + 1 == len(st.blocks)
        outs = _prune_block(run, st, first, i, inputs, last)
        inputs = [] if last else cap.for_block(i + 1, outs)
        if run.progress:
            run.progress("prune", first + i + 1, run.total)
        if run.on_block_end:
            run.on_block_end(first + i, state.data["blocks"][-1])


def _restore(state: _State, stacks: list[Stack], led: Ledger) -> dict[str, Packed]:
    """Load the pruned weights and (bit-packed) masks of the blocks already done (resume)."""
    masks: dict[str, Packed] = {}
    blocks = [(st.prefix, i, b) for st in stacks for i, b in enumerate(st.blocks)]
    for g in range(state.next_block):
        prefix, i, block = blocks[g]
        saved = state.load_block(g)
        for pname in _param_names(led, f"{prefix}.{i}", block):
            p = block.get_parameter(pname)
            with torch.no_grad():
                p.copy_(saved[pname].to(p.device, p.dtype))
            masks[f"{prefix}.{i}.{pname}"] = (saved[f"{pname}.mask"], list(p.shape))
    return masks


def _param_names(led: Ledger, prefix: str, block: nn.Module) -> list[str]:
    targets = block_targets(led, prefix, block)
    return list(dict.fromkeys(param_name(n, t) for n, t in targets.items()))


def error_batches(inputs: list[BlockInput], sequences: int | None = None) -> int:
    """How many leading calibration batches hold at least ``sequences`` (default ``ERROR_SEQUENCES``)
    sequences; all of them if they hold fewer."""
    sequences = ERROR_SEQUENCES if sequences is None else sequences
    n = 0
    for j, inp in enumerate(inputs):
        n += int(inp.hidden.shape[0])
        if n >= sequences:
            return j + 1
    return len(inputs)


def _prune_block(run: _Run, st: Stack, first: int, i: int, inputs: list[BlockInput], last: bool) -> list[Tensor]:
    """Gather, solve, re-run one block; commit its state; return its outputs (the next block's hidden states)."""
    tb = time.perf_counter()
    plan, dev, block, prefix = run.plan, run.dev, st.blocks[i], st.prefix
    _place(block, dev)
    targets = block_targets(run.ledger, f"{prefix}.{i}", block)
    needs = {n: _needs(plan, f"{prefix}.{i}.{n}") for n in targets}
    k = error_batches(inputs)
    with forward_allocations(run.pin):
        stats, dense_outs = gather_block(block, targets, needs, inputs, dev, keep=k)
    rows, saved, experts = _solve_block(run, f"{prefix}.{i}", targets, stats)
    del stats
    with torch.no_grad(), forward_allocations(run.pin):  # the last block's outputs feed nothing: the first k only
        outs = [run_block(block, to_device(inp, dev)) for inp in (inputs[:k] if last else inputs)]
    num = sum(float(((o - d) ** 2).sum()) for o, d in zip(outs, dense_outs))
    den = sum(float((d**2).sum()) for d in dense_outs)
    _place(block, _home(block))
    nxt = [o.to(STORE) for o in outs]
    info = {"block": f"{prefix}.{i}", "output_error": num / den if den > 0 else 0.0,
            "output_error_sequences": sum(int(inp.hidden.shape[0]) for inp in inputs[:k]),
            "seconds": time.perf_counter() - tb}
    run.state.data["experts"].update(experts)
    run.state.commit(first + i, saved, None if last else nxt, rows, info, time.perf_counter() - run.t0)
    log.info("block %s.%d pruned: output error %.4g in %.2fs", prefix, i, info["output_error"], info["seconds"])
    return nxt


def _solve_block(run: _Run, bname: str, targets: dict[str, Target], stats: dict[str, LayerStats]
                 ) -> tuple[list[dict], dict[str, Tensor], dict[str, dict]]:
    """Solve every target of one block; write the weights back; return report rows, state tensors, expert info."""
    plan = run.plan
    groups = expert_groups(targets)
    tokens = {n: stats[n].n_tokens for n in targets}
    masks3: dict[str, list[Tensor]] = {p: [] for p in groups}
    rows, saved, info, errs, secs = [], {}, {}, {}, {}
    for n, t in targets.items():
        full, t1 = f"{bname}.{n}", time.perf_counter()
        target = float(run.alloc.get(full, plan.sparsity))
        W_new, mask, err, fell_back = solve_target(plan, full, t.weight(), stats.pop(n), target)  # frees each H
        t.set(W_new)
        pname = param_name(n, t)
        errs[n], secs[n] = (None if err != err else err), time.perf_counter() - t1
        if fell_back:
            log.warning("%s received no calibration token: pruned by magnitude instead of %s", full, plan.solver)
            info.setdefault(f"{bname}.{pname}", {}).setdefault("fallback_magnitude", []).append(_expert_index(n, t))
        if isinstance(t, ExpertTarget):
            masks3[pname].append(mask)
            continue
        rows.append(_row(f"{bname}.{pname}", t.module.weight, mask, target, secs[n], errs[n]))
        _keep(run, saved, pname, f"{bname}.{pname}", t.module.weight, t.param_mask(mask))
    for pname, names in groups.items():
        p = targets[names[0]].module.get_parameter(pname.rsplit(".", 1)[1])
        m = torch.stack([mk.t() if targets[names[0]].transposed else mk for mk in masks3[pname]])  # param layout
        ok = [errs[x] for x in names if errs[x] is not None]
        rows.append(_row(f"{bname}.{pname}", p, m, float(run.alloc.get(f"{bname}.{names[0]}", plan.sparsity)),
                         sum(secs[x] for x in names), sum(ok) / len(ok) if ok else None))
        _keep(run, saved, pname, f"{bname}.{pname}", p, m)
        entry = info.setdefault(f"{bname}.{pname}", {})
        entry["tokens"] = [tokens[x] for x in names]
        entry.setdefault("fallback_magnitude", [])
    return rows, saved, info


def _expert_index(name: str, t: Target) -> int | None:
    """The expert number of a target: fused ``...gate_up_proj.<e>``, or unfused ``experts.<e>.w1``."""
    if isinstance(t, ExpertTarget):
        return t.expert
    parts = name.split(".")
    after = [parts[j + 1] for j, x in enumerate(parts[:-1]) if x == "experts" and parts[j + 1].isdigit()]
    return int(after[-1]) if after else None


def _row(name: str, p: Tensor, mask: Tensor, target: float, seconds: float, error: float | None) -> dict:
    kept = float(mask.sum()) / mask.numel()
    return {"name": name, "shape": list(p.shape), "numel": p.numel(), "sparsity": 1.0 - kept, "target": target,
            "seconds": seconds, "error": error}


def _keep(run: _Run, saved: dict[str, Tensor], pname: str, full: str, p: Tensor, mask: Tensor) -> None:
    bits = pack_mask(mask.contiguous())  # 1 bit per weight: masks of all layers stay small
    run.masks[full] = (bits, list(p.shape))
    saved[pname], saved[f"{pname}.mask"] = p.detach().cpu(), bits


def _report(model: nn.Module, run: _Run, config: Any, solver: str, calib: Calibration, attach_masks: bool) -> Report:
    plan, state = run.plan, run.state
    layers = [LayerReport(**r) for r in state.data["layers"]]
    method = config.to_dict() if hasattr(config, "to_dict") else {"type": solver}
    method = {**method, "solver": plan.solver, "owl": None if plan.owl is None else vars(plan.owl),
              "dsnot": None if plan.dsnot is None else vars(plan.dsnot)}
    experts = state.data["experts"]
    fallbacks = {k: v["fallback_magnitude"] for k, v in experts.items() if v.get("fallback_magnitude")}
    extra = {"blocks": state.data["blocks"], "calibration": calib.info, "owl": state.data["owl"],
             "stacks": [s.prefix for s in run.stacks], "experts": experts, "expert_fallbacks": fallbacks,
             "runs": state.data["runs"]}
    seconds = float(state.data["elapsed"])
    run.ledger.measure(model)
    run.ledger.log_kept(log)
    extra["ledger"] = run.ledger.to_dict()
    if not attach_masks:
        extra["packed_masks"] = run.masks
        return Report(method, layers, seconds, None, extra, ledger=run.ledger)
    ms = attach(model, {k: unpack_mask(bits, shape) for k, (bits, shape) in run.masks.items()})
    return Report(method, layers, seconds, ms, extra, ledger=run.ledger)


def clear_state(state_dir: str | Path) -> None:
    """Delete a finished run's resume files (``state.json``, ``block_*``, ``hidden_*``)."""
    root = Path(state_dir)
    remove_owned([*root.glob("block_*.safetensors"), *root.glob("hidden_*.safetensors"), root / "state.json"])
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()  # only when nothing else is left in it
