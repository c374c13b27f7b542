"""Wall-clock latency of a forward pass, alone or several models side by side (interleaved repeats).

A pruned model's *measured speedup* is ``compare_latency({"dense": a, "pruned": b}, x).speedups["pruned"]``:
the repeats of all models alternate round-robin, so machine noise (other processes, frequency changes)
falls on every model alike and the ratio is steadier than two separate timings.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from prunekit.accounting import ExampleInputs, call_with

log = logging.getLogger(__name__)

__all__ = ["LatencyResult", "LatencyComparison", "measure_latency", "compare_latency"]


@dataclass(frozen=True)
class LatencyResult:
    """Summary of repeated forward passes, in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float  # sample standard deviation (0 for one repeat)
    min_ms: float  # least affected by other processes on a busy machine
    threads: int  # torch intra-op threads used
    batch_shape: tuple[int, ...]  # shape of the first input tensor
    repeats: int
    warmup: int
    device: str
    times_ms: tuple[float, ...] = field(repr=False)  # every timed repeat, in order

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON fields (lists instead of tuples)."""
        d = asdict(self)
        d["batch_shape"], d["times_ms"] = list(self.batch_shape), list(self.times_ms)
        return d


@dataclass(frozen=True)
class LatencyComparison:
    """Per-model results of one interleaved run, and each median over the first model's median."""

    results: dict[str, LatencyResult]
    ratios: dict[str, float]  # median[name] / median[first]: below 1 is faster than the first

    @property
    def speedups(self) -> dict[str, float]:
        """median[first] / median[name]: above 1 is faster than the first model."""
        return {k: 1.0 / r if r > 0 else math.inf for k, r in self.ratios.items()}


def summarize(times_ms: list[float], **meta: Any) -> LatencyResult:
    """Median, 10th/90th percentiles (linear interpolation), mean, sample std and minimum of the times."""
    t = np.asarray(times_ms, dtype=np.float64)
    std = float(t.std(ddof=1)) if t.size > 1 else 0.0
    p10, med, p90 = (float(v) for v in np.percentile(t, [10, 50, 90]))
    return LatencyResult(median_ms=med, p10_ms=p10, p90_ms=p90, mean_ms=float(t.mean()), std_ms=std,
                         min_ms=float(t.min()), times_ms=tuple(float(v) for v in t), **meta)


# ---------------------------------------------------------------------------------------------------------
# input checks (all before any work)


def _check_counts(warmup: Any, repeats: Any, threads: Any) -> None:
    """Raise naming the argument when a count is not an integer in its range."""
    for name, value, low in (("warmup", warmup, 0), ("repeats", repeats, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be None (keep the current count) or an integer >= 1, got {threads!r}")


def _check_device(device: Any) -> torch.device:
    """Parse ``device``; raise if it is malformed or absent on this machine."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available; use device='cpu'")
    return dev


def _check_model(model: Any, dev: torch.device, name: str = "model") -> None:
    """Raise if ``model`` is not a module or holds tensors on another device than ``dev``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be an nn.Module, got {type(model).__name__}")
    for t in [*model.parameters(), *model.buffers()]:
        if t.device.type != dev.type or (dev.index is not None and t.device.index != dev.index):
            raise ValueError(f"{name} has tensors on {t.device} but device={str(dev)!r}; "
                             f"move it first with model.to({str(dev)!r})")


def _check_inputs(example_inputs: Any) -> None:
    """Raise unless the inputs are a tensor, a tuple/list of inputs or a dict of keyword inputs."""
    if not isinstance(example_inputs, (Tensor, tuple, list, Mapping)):
        raise TypeError("example_inputs must be a tensor, a tuple/list of positional inputs or a dict of "
                        f"keyword inputs, got {type(example_inputs).__name__}")


# ---------------------------------------------------------------------------------------------------------
# the timer


def _to(inputs: Any, dev: torch.device) -> Any:
    """Move every tensor in (nested) inputs to ``dev``."""
    if isinstance(inputs, Tensor):
        return inputs.to(dev)
    if isinstance(inputs, Mapping):
        return {k: _to(v, dev) for k, v in inputs.items()}
    if type(inputs) in (tuple, list):
        return type(inputs)(_to(v, dev) for v in inputs)
    return inputs.to(dev) if callable(getattr(inputs, "to", None)) else inputs  # e.g. PackedSequence


def _first_shape(inputs: Any) -> tuple[int, ...]:
    """Shape of the first tensor in (nested) inputs, () if there is none."""
    if isinstance(inputs, Tensor):
        return tuple(inputs.shape)
    values = inputs.values() if isinstance(inputs, Mapping) else inputs if isinstance(inputs, (tuple, list)) else []
    for v in values:
        shape = _first_shape(v)
        if shape:
            return shape
    return ()


def _time_once(model: nn.Module, inputs: ExampleInputs, dev: torch.device) -> float:
    """Milliseconds of one forward pass (CUDA work is synchronized on both sides)."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    call_with(model, inputs)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return (time.perf_counter() - t0) * 1e3


@contextmanager
def _timing_session(models: list[nn.Module], threads: int | None) -> Iterator[int]:
    """Eval mode, inference mode, the thread count and no GC pauses; all restored after. Yields threads."""
    before, gc_was_on = torch.get_num_threads(), gc.isenabled()
    flags = [{m: m.training for m in model.modules()} for model in models]
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        for model in models:
            model.eval()
        gc.collect()
        gc.disable()
        with torch.inference_mode():
            yield torch.get_num_threads()
    finally:
        if gc_was_on:
            gc.enable()
        torch.set_num_threads(before)
        for f in flags:
            for m, flag in f.items():
                m.training = flag


def compare_latency(models: Mapping[str, nn.Module], example_inputs: ExampleInputs, *, warmup: int = 5,
                    repeats: int = 30, threads: int | None = None, device: str = "cpu") -> LatencyComparison:
    """Time several models on the same inputs, round-robin (the order rotates each round).

    Returns every model's ``LatencyResult`` and its median over the first model's median.
    """
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be a non-empty dict {name: nn.Module}; the first one is the baseline")
    _check_counts(warmup, repeats, threads)
    _check_inputs(example_inputs)
    dev = _check_device(device)
    for name, model in models.items():
        _check_model(model, dev, name=f"models[{name!r}]")
    names, inputs = list(models), _to(example_inputs, dev)
    times: dict[str, list[float]] = {n: [] for n in names}
    with _timing_session(list(models.values()), threads) as used:
        for r in range(warmup + repeats):
            for j in range(len(names)):
                n = names[(r + j) % len(names)]
                ms = _time_once(models[n], inputs, dev)
                if r >= warmup:
                    times[n].append(ms)
    meta = dict(threads=used, batch_shape=_first_shape(example_inputs), repeats=repeats, warmup=warmup,
                device=str(dev))
    results = {n: summarize(times[n], **meta) for n in names}
    base = results[names[0]].median_ms
    ratios = {n: (r.median_ms / base if base > 0 else math.inf) for n, r in results.items()}
    log.info("latency medians (ms): %s", {n: round(r.median_ms, 4) for n, r in results.items()})
    return LatencyComparison(results=results, ratios=ratios)


def measure_latency(model: nn.Module, example_inputs: ExampleInputs, *, warmup: int = 5, repeats: int = 30,
                    threads: int | None = None, device: str = "cpu") -> LatencyResult:
    """Forward-pass latency of one model in ``torch.inference_mode`` and eval mode, in milliseconds."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return compare_latency({"model": model}, example_inputs, warmup=warmup, repeats=repeats, threads=threads,
                           device=device).results["model"]
