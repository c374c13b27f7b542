"""Zoo models: shapes, parameter counts, ViT head bookkeeping, determinism, argument errors."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn

from prunekit.training import evaluate, fit
from prunekit.zoo import (
    CNN1D,
    MODELS,
    RECIPE_DATASETS,
    RECIPES,
    LeNet5,
    ViT,
    example_inputs,
    get_dataset,
    get_model,
    input_shape,
)
from prunekit.zoo.vit import Attention

NAMES = ["mlp", "lenet5", "cnn1d", "resnet20", "resnet56", "vgg", "mobilenetv2", "vit", "vit-softhgnn"]


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_registry_has_every_model() -> None:
    assert MODELS.names() == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_forward_shape(name: str) -> None:
    m = get_model(name, seed=0).eval()
    assert m(example_inputs(name, batch=3)).shape == (3, 10)
    m7 = get_model(name, seed=0, num_classes=7).eval()
    assert m7(example_inputs(name, batch=2)).shape == (2, 7)


@pytest.mark.parametrize("name", NAMES)
def test_seed_gives_same_weights_and_leaves_global_rng(name: str) -> None:
    before = torch.random.get_rng_state()
    a, b, c = get_model(name, seed=3), get_model(name, seed=3), get_model(name, seed=4)
    assert torch.equal(torch.random.get_rng_state(), before)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())


@pytest.mark.parametrize("name", NAMES)
def test_symbolic_trace_matches_eager(name: str) -> None:
    """Structured pruning may trace the models with torch.fx; no Python control flow on shapes."""
    m = get_model(name, seed=0).eval()
    x = example_inputs(name)
    assert torch.allclose(torch.fx.symbolic_trace(m)(x), m(x))


def test_example_input_shapes() -> None:
    assert example_inputs("cnn1d", batch=4).shape == (4, 40)
    assert example_inputs("mlp").shape == (2, 40)
    assert example_inputs("mlp", in_features=64).shape == (2, 64)
    assert example_inputs("lenet5").shape == (2, 1, 8, 8)
    assert example_inputs("lenet5", image_size=28).shape == (2, 1, 28, 28)
    for name in ("resnet20", "resnet56", "vgg", "mobilenetv2", "vit"):
        assert example_inputs(name).shape == (2, 3, 32, 32)
    assert input_shape("resnet20", in_channels=1) == (1, 32, 32)
    assert input_shape("cnn1d", in_channels=2) == (2, 40)
    assert torch.equal(example_inputs("vit", seed=5), example_inputs("vit", seed=5))


def test_resnet_parameter_counts() -> None:
    r20, r56 = get_model("resnet20"), get_model("resnet56")
    assert 260_000 <= n_params(r20) <= 280_000
    # resnet56 adds 6 basic blocks in each of the three stages: 2 conv3x3 + 2 BN of width 16, 32, 64
    per_block = sum(2 * (9 * w * w + 2 * w) for w in (16, 32, 64))
    assert n_params(r56) - n_params(r20) == 6 * per_block


def test_resnet_option_b_shortcuts() -> None:
    r = get_model("resnet20")
    assert isinstance(r.layer2[0].shortcut[0], nn.Conv2d) and r.layer2[0].shortcut[0].kernel_size == (1, 1)
    assert len(r.layer1[0].shortcut) == 0  # identity where shapes agree


def test_cnn1d_matches_the_paper_convnet() -> None:
    m = get_model("cnn1d")
    # conv 1->25 k5, 25->25 k3, 25->25 k3 (lengths 40 -> 19 -> 10 -> 5), linear 125 -> 10
    assert n_params(m) == (25 * 5 + 25) + 2 * (25 * 25 * 3 + 25) + (125 * 10 + 10)
    x = example_inputs("cnn1d", batch=3)
    assert torch.equal(m(x), m(x.unsqueeze(1)))


@pytest.mark.parametrize("size", [8, 28, 32])
def test_lenet5_sizes(size: int) -> None:
    m = LeNet5(image_size=size).eval()
    assert m(torch.randn(2, 1, size, size)).shape == (2, 10)
    assert m.fc1.in_features == 16 * {8: 2, 28: 5, 32: 6}[size] ** 2


def test_lenet5_default_accepts_other_sizes() -> None:
    assert LeNet5().eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_configurable_channels() -> None:
    for name in ("resnet20", "vgg", "mobilenetv2", "vit", "lenet5"):
        m = get_model(name, in_channels=1).eval()
        assert m(example_inputs(name, in_channels=1)).shape == (2, 10)
    assert get_model("mlp", hidden=()).head.in_features == 40


def test_vit_head_attributes_consistent() -> None:
    m = ViT(num_heads=3, head_dim=8, dim=32, mlp_dim=48, depth=2)
    for block in m.blocks:
        a = block.attn
        assert (a.num_heads, a.head_dim) == (3, 8)
        for lin in (a.q, a.k, a.v):
            assert lin.out_features == a.num_heads * a.head_dim and lin.in_features == 32
        assert a.o.in_features == 24 and a.o.out_features == 32
        assert block.mlp.fc1.out_features == 48 == block.mlp.fc2.in_features


def test_vit_head_removal_equals_zeroing_the_head() -> None:
    """Deleting head 1 from q/k/v rows and o columns gives the output of zeroing its o columns."""
    torch.manual_seed(0)
    a = Attention(dim=16, num_heads=3, head_dim=4).eval()
    x = torch.randn(2, 5, 16)
    keep = torch.tensor([0, 1, 2, 3, 8, 9, 10, 11])  # heads 0 and 2
    slim = Attention(dim=16, num_heads=2, head_dim=4).eval()
    with torch.no_grad():
        for n in ("q", "k", "v"):
            getattr(slim, n).weight.copy_(getattr(a, n).weight[keep])
            getattr(slim, n).bias.copy_(getattr(a, n).bias[keep])
        slim.o.weight.copy_(a.o.weight[:, keep])
        slim.o.bias.copy_(a.o.bias)
        a.o.weight[:, 4:8] = 0
    assert torch.allclose(slim(x), a(x), atol=1e-6)


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="accepted: .*resnet20"):
        get_model("resnet21")
    with pytest.raises(TypeError, match="accepted arguments: .*width_mult"):
        get_model("resnet20", widht_mult=2)
    with pytest.raises(ValueError, match="depth must be 6n\\+2"):
        get_model("resnet20").__class__(depth=21)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        get_model("vit", image_size=30)
    with pytest.raises(ValueError, match="config must be one of"):
        get_model("vgg", config="vgg19")
    with pytest.raises(ValueError, match="width_mult"):
        get_model("mobilenetv2", width_mult=0)
    with pytest.raises(ValueError, match="hidden\\[1\\]"):
        get_model("mlp", hidden=(8, -1))
    with pytest.raises(ValueError, match="too short"):
        CNN1D(in_length=2)
    with pytest.raises(ValueError, match="batch"):
        example_inputs("mlp", batch=0)
    with pytest.raises(ValueError, match="seed"):
        get_model("mlp", seed="0")


def test_recipes_name_models_and_data() -> None:
    assert "cnn1d" in RECIPES and set(RECIPES) == set(RECIPE_DATASETS)
    for name, recipe in RECIPES.items():
        assert name in MODELS
        assert set(recipe) == {"epochs", "lr", "optimizer", "weight_decay", "batch_size"}


def test_cnn1d_recipe_learns_quickly() -> None:
    """A shortened cnn1d recipe on a small MNIST-1D is far above chance (10%); the full figure is a benchmark."""
    d = get_dataset("mnist1d", num_samples=3000)
    m = get_model("cnn1d", seed=0)
    fit(m, d.train, seed=0, **{**RECIPES["cnn1d"], "epochs": 10})
    assert evaluate(m, d.test)["accuracy"] > 0.45
