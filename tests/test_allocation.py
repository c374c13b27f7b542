import pytest
import torch

from prunekit import allocation as A


def _mean(alloc, sizes):
    return A.weighted_sparsity(alloc, sizes)


def test_uniform_hits_target_exactly():
    sizes = {"a": 1000, "b": 300}
    out = A.uniform(sizes, 0.9)
    assert out == {"a": pytest.approx(0.9), "b": pytest.approx(0.9)}


def test_global_hand_case_and_guard():
    scores = {"a": torch.tensor([5.0, 4.0, 3.0, 2.0]), "b": torch.tensor([1.0, 0.5, 0.2, 0.1])}
    # keep 4 of 8: all of "a" without a guard
    assert A.global_(scores, 0.5, max_layer_sparsity=1.0) == {"a": 0.0, "b": 1.0}
    # with the guard each layer keeps at least 1 of 4 (max 0.75)
    assert A.global_(scores, 0.5, max_layer_sparsity=0.75) == {"a": 0.25, "b": 0.75}


def test_erk_prefers_small_layers_and_meets_target():
    shapes = {"conv": (16, 3, 3, 3), "fc1": (256, 512), "fc2": (10, 256)}
    sizes = {k: torch.Size(v).numel() for k, v in shapes.items()}
    out = A.erk(shapes, 0.9)
    assert abs(_mean(out, sizes) - 0.9) * sum(sizes.values()) <= 1.0
    assert out["fc1"] > out["fc2"] and out["fc1"] > out["conv"]
    assert all(0.0 <= s <= 0.99 for s in out.values())


def test_er_ignores_kernel():
    shapes = {"c1": (8, 8, 3, 3), "c2": (8, 8, 1, 1)}
    out = A.er(shapes, 0.5)
    sizes = {"c1": 576, "c2": 64}
    assert abs(_mean(out, sizes) - 0.5) * 640 <= 1.0


def test_lamp_meets_target():
    g = torch.Generator().manual_seed(0)
    w = {"a": torch.randn(100, generator=g), "b": torch.randn(50, generator=g) * 10}
    out = A.lamp(w, 0.8)
    assert abs(_mean(out, {"a": 100, "b": 50}) - 0.8) * 150 <= 1.0


def test_owl_gives_outlier_layers_lower_sparsity():
    sizes = {"a": 100, "b": 100, "c": 200}
    out = A.owl({"a": 0.01, "b": 0.05, "c": 0.03}, sizes, 0.7, lam=0.1)
    assert out["b"] < out["c"] < out["a"]
    assert abs(_mean(out, sizes) - 0.7) * 400 <= 1.0
    assert max(out.values()) - min(out.values()) == pytest.approx(0.2, abs=0.02)


def test_allocate_on_model_and_bad_input(tiny_net):
    out = A.allocate(tiny_net, 0.95, "global")
    assert max(out.values()) <= 0.99
    with pytest.raises(ValueError, match="unknown allocation"):
        A.allocate(tiny_net, 0.5, "nope")
    with pytest.raises(ValueError, match="sparsity"):
        A.allocate(tiny_net, 1.0, "erk")
    with pytest.raises(ValueError, match="max_layer_sparsity"):
        A.uniform({"a": 10}, 0.995)
