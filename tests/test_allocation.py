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


def test_a_binding_cap_is_logged_and_recorded_with_reached_vs_target(caplog):
    # cnn1d's four layers at a 99% target: each keeps at least ceil(1% of it) = 2, 19, 19, 13 of 125, 1875,
    # 1875, 1250 weights, 53 in all where the target keeps 51; every rule gives the same allocation
    sizes = {"c0": 125, "c1": 1875, "c2": 1875, "fc": 1250}
    shapes = {"c0": (25, 1, 5), "c1": (25, 25, 3), "c2": (25, 25, 3), "fc": (10, 125)}
    g = torch.Generator().manual_seed(0)
    scores = {k: torch.rand(n, generator=g) for k, n in sizes.items()}
    with caplog.at_level("WARNING", logger="prunekit.allocation"):
        results = [A.uniform(sizes, 0.99), A.erk(shapes, 0.99), A.global_(scores, 0.99)]
    for out in results:
        assert out == {"c0": 1 - 2 / 125, "c1": 1 - 19 / 1875, "c2": 1 - 19 / 1875, "fc": 1 - 13 / 1250}
        b = out.binding
        assert b["capped"] == ["c0", "c1", "c2", "fc"] and b["short"] and b["target"] == 0.99
        assert b["reached"] == pytest.approx(1 - 53 / 5125)
    assert len(caplog.records) == 3
    msg = caplog.records[-1].getMessage()
    assert "max_layer_sparsity=0.99 binds in the 'global' allocation: 4 of 4 layers" in msg
    assert "reached sparsity 0.9897 vs target 0.9900" in msg and "the target is not met" in msg


def test_no_binding_no_warning_and_a_partial_binding_meets_the_target(caplog):
    sizes = {"a": 1000, "b": 300}
    with caplog.at_level("WARNING", logger="prunekit.allocation"):
        out = A.uniform(sizes, 0.9)
    assert out.binding is None and not caplog.records
    scores = {"a": torch.arange(100.0), "b": torch.arange(100.0) - 1000}  # global wants to empty "b"
    with caplog.at_level("WARNING", logger="prunekit.allocation"):
        out = A.global_(scores, 0.5, max_layer_sparsity=0.9)
    assert out == {"a": 1 - 90 / 100, "b": 1 - 10 / 100}  # "b" held at 10 kept; "a" gives up 10
    assert out.binding["capped"] == ["b"] and not out.binding["short"]
    assert "1 of 2 layers held at the cap ['b']; reached sparsity 0.5000 vs target 0.5000" in caplog.text


def test_a_collapsed_layer_is_named_with_the_way_out(tiny_net):
    from prunekit.api import Magnitude, prune_

    # 95% of 1376 weights: the 69 kept are all conv weights (init bound 1/sqrt(12), 1/sqrt(24) > fc1's 1/8)
    before = tiny_net.fc1.weight.detach().clone()
    with pytest.raises(ValueError, match=r"got 1\.0 for layer 'fc1\.weight'.*max_layer_sparsity.*exclude"):
        prune_(tiny_net, Magnitude(0.95, scope="global", max_layer_sparsity=1.0))
    assert torch.equal(tiny_net.fc1.weight.detach(), before)  # nothing attached, nothing zeroed


def test_erk_and_er_count_a_fused_expert_tensor_as_e_matrices():
    # "a": (10, 10), scale 20/100 = 0.2; "e": 2 experts of (20, 20), scale 40/400 = 0.1 (not 42/800), size 800.
    # keep 0.2 * 900 = 180 = eps * (0.2 * 100 + 0.1 * 800) -> eps = 1.8: densities 0.36 and 0.18
    shapes = {"a": (10, 10), "e": (2, 20, 20)}
    for rule in (A.erk, A.er):  # ER reads (out, in) of each expert, not (E, out)
        out = rule(shapes, 0.8, groups={"e": 2})
        assert out == {"a": pytest.approx(1 - 36 / 100), "e": pytest.approx(1 - 144 / 800)}
    assert A.erk(shapes, 0.8)["e"] != pytest.approx(1 - 144 / 800)  # without groups: a (2, 20, 20) kernel


def test_allocate_reads_the_experts_of_a_model():
    from torch import nn

    class Experts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gate_up_proj = nn.Parameter(torch.randn(2, 20, 20))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(10, 10)
            self.experts = Experts()

    out = A.allocate(Net(), 0.8, "erk")
    assert out == {"fc.weight": pytest.approx(0.64), "experts.gate_up_proj": pytest.approx(1 - 144 / 800)}
