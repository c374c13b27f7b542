"""Model registry: ``get_model(name, **kwargs)``, ``example_inputs(name)`` and default training recipes."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import Registry
from .convnets import VGG, CifarResNet, MobileNetV2
from .small import CNN1D, MLP, LeNet5
from .softhgnn import SoftHGNNViT
from .vit import ViT

MODELS = Registry("model")

ShapeFn = Callable[[dict[str, Any]], tuple[int, ...]]
_INPUT_SHAPES: dict[str, ShapeFn] = {}

# Default training recipes, keyword arguments for ``prunekit.training.fit`` on each model's default data.
# Every entry was measured; see docs/results/zoo.md for the command and the accuracies it gives.
# SGD below is momentum 0.9 with a cosine learning-rate schedule (``fit``'s defaults).
RECIPES: dict[str, dict[str, Any]] = {
    "cnn1d": dict(epochs=60, lr=0.1, optimizer="sgd", weight_decay=5e-4, batch_size=128),  # on mnist1d()
    "mlp": dict(epochs=60, lr=0.05, optimizer="sgd", weight_decay=5e-4, batch_size=128),  # on mnist1d()
    "lenet5": dict(epochs=30, lr=0.05, optimizer="sgd", weight_decay=5e-4, batch_size=64),  # on digits()
    "vit-softhgnn": dict(epochs=30, lr=2e-3, optimizer="adamw", weight_decay=0.05, batch_size=64),  # on digits()
}

# The built-in data set each recipe was measured on (a name for ``prunekit.zoo.get_dataset``).
RECIPE_DATASETS: dict[str, str] = {"cnn1d": "mnist1d", "mlp": "mnist1d", "lenet5": "digits", "vit-softhgnn": "digits"}


def register_model(name: str, input_shape: ShapeFn) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator filing a model factory under ``name``; ``input_shape(args)`` gives one example's shape."""

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS.register(name)(factory)
        _INPUT_SHAPES[name] = input_shape
        return factory

    return deco


def _bind(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The factory's full argument dict for ``kwargs`` (defaults filled); unknown names raise ``TypeError``."""
    factory = MODELS.get(name)
    sig = inspect.signature(factory)
    try:
        bound = sig.bind(**kwargs)
    except TypeError as e:
        accepted = ", ".join(sig.parameters)
        raise TypeError(f"model {name!r}: {e}; accepted arguments: {accepted}") from None
    bound.apply_defaults()
    return dict(bound.arguments)


def get_model(name: str, seed: int | None = None, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; with ``seed`` its initial weights are reproducible."""
    args = _bind(name, kwargs)
    if seed is None:
        return MODELS.get(name)(**args)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer or None, got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS.get(name)(**args)


def input_shape(name: str, **kwargs: Any) -> tuple[int, ...]:
    """Shape of one example (no batch dimension) for model ``name`` built with ``kwargs``."""
    return _INPUT_SHAPES[name](_bind(name, kwargs))


def example_inputs(name: str, batch: int = 2, seed: int = 0, **kwargs: Any) -> Tensor:
    """A ``(batch, *input_shape)`` float tensor of standard-normal values for model ``name``."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    shape = input_shape(name, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *shape), generator=gen)


def _image(a: dict[str, Any], size: int = 32) -> tuple[int, ...]:
    """(C, H, W) for a model taking ``in_channels`` channels of ``image_size`` (or ``size``) pixels."""
    s = a.get("image_size", size)
    return (a["in_channels"], s, s)


@register_model("mlp", lambda a: (a["in_features"],))
def mlp(in_features: int = 40, hidden: Sequence[int] = (256, 128), num_classes: int = 10) -> MLP:
    """A multi-layer perceptron; default input is an MNIST-1D row of 40 values."""
    return MLP(in_features, hidden, num_classes)


@register_model("lenet5", _image)
def lenet5(in_channels: int = 1, num_classes: int = 10, image_size: int = 8) -> LeNet5:
    """LeNet-5 sized for ``image_size`` images; default 1x8x8 scikit-learn digits."""
    return LeNet5(in_channels, num_classes, image_size)


@register_model("cnn1d", lambda a: (a["in_length"],) if a["in_channels"] == 1 else (a["in_channels"], a["in_length"]))
def cnn1d(
    in_length: int = 40,
    num_classes: int = 10,
    channels: int = 25,
    kernel_sizes: Sequence[int] = (5, 3, 3),
    in_channels: int = 1,
) -> CNN1D:
    """The MNIST-1D ConvNet (Greydanus 2020); default input ``(B, 40)``."""
    return CNN1D(in_length, num_classes, channels, kernel_sizes, in_channels)


@register_model("resnet20", _image)
def resnet20(in_channels: int = 3, num_classes: int = 10, width_mult: float = 1.0) -> CifarResNet:
    """CIFAR ResNet-20 (He et al. 2016), about 0.27M parameters at 3x32x32 and 10 classes."""
    return CifarResNet(20, in_channels, num_classes, width_mult)


@register_model("resnet56", _image)
def resnet56(in_channels: int = 3, num_classes: int = 10, width_mult: float = 1.0) -> CifarResNet:
    """CIFAR ResNet-56 (He et al. 2016), about 0.86M parameters at 3x32x32 and 10 classes."""
    return CifarResNet(56, in_channels, num_classes, width_mult)


@register_model("vgg", _image)
def vgg(config: str = "vgg11", in_channels: int = 3, num_classes: int = 10, width_mult: float = 0.25) -> VGG:
    """A small VGG with BatchNorm (VGG-11 layout at a quarter width by default)."""
    return VGG(config, in_channels, num_classes, width_mult)


@register_model("mobilenetv2", _image)
def mobilenetv2(in_channels: int = 3, num_classes: int = 10, width_mult: float = 0.5) -> MobileNetV2:
    """A small CIFAR MobileNetV2 (half width by default)."""
    return MobileNetV2(in_channels, num_classes, width_mult)


@register_model("vit", _image)
def vit(
    image_size: int = 32,
    patch_size: int = 4,
    in_channels: int = 3,
    num_classes: int = 10,
    dim: int = 64,
    depth: int = 4,
    num_heads: int = 4,
    head_dim: int = 16,
    mlp_dim: int = 128,
) -> ViT:
    """A tiny ViT: 4x4 patches of 32x32 images, 4 blocks of 4 heads of 16 dims."""
    return ViT(image_size, patch_size, in_channels, num_classes, dim, depth, num_heads, head_dim, mlp_dim)


@register_model("vit-softhgnn", _image)
def vit_softhgnn(image_size: int = 8, patch_size: int = 2, in_channels: int = 1, num_classes: int = 10, dim: int = 64,
                 depth: int = 2, num_heads: int = 4, head_dim: int = 16, mlp_dim: int = 128, num_edges: int = 8,
                 top_k: int = 4, balance: float = 0.01) -> SoftHGNNViT:
    """The zoo ViT plus a SoftHGNN soft-hyperedge branch per block (top-k of 8 per input); 2x2 patches of 8x8 digits."""
    return SoftHGNNViT(image_size, patch_size, in_channels, num_classes, dim, depth, num_heads, head_dim, mlp_dim,
                       num_edges, top_k, balance)
