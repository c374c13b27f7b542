"""Latency timer: sane numbers, interleaved repeats, restored thread count and modes; no timing assertions."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prunekit.bench.latency import LatencyResult, compare_latency, measure_latency, summarize


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 4))


def test_measure_latency_returns_sane_positive_numbers() -> None:
    r = measure_latency(_mlp(), torch.randn(8, 16), warmup=2, repeats=7)
    assert isinstance(r, LatencyResult)
    assert len(r.times_ms) == 7 and all(t > 0 and math.isfinite(t) for t in r.times_ms)
    assert 0 < r.min_ms <= r.p10_ms <= r.median_ms <= r.p90_ms
    assert min(r.times_ms) <= r.mean_ms <= max(r.times_ms) and r.std_ms >= 0
    assert r.batch_shape == (8, 16) and r.device == "cpu" and (r.repeats, r.warmup) == (7, 2)
    assert r.to_dict()["batch_shape"] == [8, 16]


def test_thread_count_training_flags_and_grad_mode_are_restored() -> None:
    before = torch.get_num_threads()
    model = _mlp().train()
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append((torch.get_num_threads(), m.training,
                                                             torch.is_inference_mode_enabled())))
    r = measure_latency(model, torch.randn(2, 16), warmup=1, repeats=3, threads=1)
    assert r.threads == 1 and all(s == (1, False, True) for s in seen) and len(seen) == 4
    assert torch.get_num_threads() == before
    assert model.training and all(m.training for m in model)


def test_thread_count_is_restored_when_the_model_fails() -> None:
    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"):
        measure_latency(Boom(), torch.randn(1), threads=1)
    assert torch.get_num_threads() == before


def test_compare_latency_interleaves_and_gives_ratios_to_the_first() -> None:
    calls: list[str] = []
    models = {n: _mlp() for n in ("dense", "pruned", "slim")}
    for n, m in models.items():
        m.register_forward_hook(lambda mod, i, o, n=n: calls.append(n))
    c = compare_latency(models, {"input": torch.randn(4, 16)}, warmup=1, repeats=4)
    assert list(c.results) == ["dense", "pruned", "slim"] and c.ratios["dense"] == 1.0
    assert len(calls) == 3 * 5
    rounds = [calls[i:i + 3] for i in range(0, len(calls), 3)]
    assert all(sorted(r) == ["dense", "pruned", "slim"] for r in rounds)  # each round runs every model once
    assert rounds[0] != rounds[1]  # the order rotates
    for n, r in c.results.items():
        assert c.ratios[n] == pytest.approx(r.median_ms / c.results["dense"].median_ms)
        assert c.speedups[n] == pytest.approx(1 / c.ratios[n])
        assert len(r.times_ms) == 4 and r.batch_shape == (4, 16)


def test_summarize_by_hand() -> None:
    r = summarize([1.0, 2.0, 3.0, 4.0, 5.0], threads=1, batch_shape=(1,), repeats=5, warmup=0, device="cpu")
    assert (r.median_ms, r.mean_ms, r.min_ms) == (3.0, 3.0, 1.0)
    assert r.p10_ms == pytest.approx(1.4) and r.p90_ms == pytest.approx(4.6)
    assert r.std_ms == pytest.approx(math.sqrt(2.5))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"repeats": 0}, "repeats"),
    ({"warmup": -1}, "warmup"),
    ({"threads": 0}, "threads"),
    ({"device": "banana"}, "device"),
])
def test_bad_arguments_raise_before_running(kwargs: dict, match: str) -> None:
    calls = []
    model = _mlp()
    model.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match=match):
        measure_latency(model, torch.randn(1, 16), **kwargs)
    assert calls == []


def test_bad_models_and_inputs_raise() -> None:
    with pytest.raises(ValueError, match="non-empty dict"):
        compare_latency({}, torch.randn(1, 16))
    with pytest.raises(TypeError, match="model"):
        measure_latency("not a model", torch.randn(1, 16))
    with pytest.raises(TypeError, match="example_inputs"):
        measure_latency(_mlp(), 3)
    with pytest.raises(ValueError, match="move it first"):
        measure_latency(_mlp().to("meta"), torch.randn(1, 16))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            measure_latency(_mlp(), torch.randn(1, 16), device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_measure_latency_on_cuda() -> None:
    r = measure_latency(_mlp().cuda(), torch.randn(8, 16), warmup=2, repeats=5, device="cuda")
    assert r.device.startswith("cuda") and r.median_ms > 0
