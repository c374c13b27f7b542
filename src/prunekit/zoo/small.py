"""Small built-in classifiers: an MLP, LeNet-5 for small images, and the MNIST-1D ConvNet."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def _check_positive_int(value: object, name: str) -> int:
    """Return ``value`` if it is a positive int, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_positive_ints(values: object, name: str) -> tuple[int, ...]:
    """Return ``values`` as a tuple of positive ints (an empty tuple is allowed)."""
    if isinstance(values, int) and not isinstance(values, bool):
        values = (values,)
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise ValueError(f"{name} must be a sequence of positive integers, got {values!r}")
    return tuple(_check_positive_int(v, f"{name}[{i}]") for i, v in enumerate(values))


class MLP(nn.Module):
    """Fully connected classifier: Linear-ReLU blocks then a linear head; flattens its input."""

    def __init__(self, in_features: int = 40, hidden: Sequence[int] = (256, 128), num_classes: int = 10) -> None:
        super().__init__()
        _check_positive_int(in_features, "in_features")
        widths = (in_features, *_check_positive_ints(hidden, "hidden"))
        _check_positive_int(num_classes, "num_classes")
        self.in_features = in_features
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)``; any input of ``in_features`` values per example."""
        x = x.flatten(1)  # (B, in_features)
        return self.head(self.features(x))  # (B, num_classes)


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution or pooling along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998): conv5-pool-conv5-pool-fc120-fc84-fc, sized for ``image_size`` inputs.

    The first convolution pads by 2 (as is usual for 28x28 MNIST); the second pads by 2 only when the
    map is too small for an unpadded 5x5 kernel (8x8 digits). An adaptive average pool before the
    classifier makes the model accept other input sizes too (it is the identity at ``image_size``).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 8) -> None:
        super().__init__()
        _check_positive_int(in_channels, "in_channels")
        _check_positive_int(num_classes, "num_classes")
        if _check_positive_int(image_size, "image_size") < 4:
            raise ValueError(f"image_size must be at least 4 for LeNet5, got {image_size}")
        s = image_size // 2  # after conv1 (same padding) and the first pool
        pad2 = 0 if s >= 10 else 2
        side = _conv_out(s, 5, 1, pad2) // 2
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5, padding=pad2)
        self.pool = nn.MaxPool2d(2)
        self.squash = nn.AdaptiveAvgPool2d(side)
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, C, H, W)``."""
        h = self.pool(torch.relu(self.conv1(x)))  # (B, 6, H/2, W/2)
        h = self.pool(torch.relu(self.conv2(h)))  # (B, 16, s, s)
        h = self.squash(h).flatten(1)  # (B, 16*side*side)
        h = torch.relu(self.fc1(h))
        h = torch.relu(self.fc2(h))
        return self.fc3(h)  # (B, num_classes)


class CNN1D(nn.Module):
    """The MNIST-1D ConvNet (Greydanus 2020, "Scaling down deep learning", Sec. 3 / its ConvBase model).

    Three Conv1d layers (stride 2, padding 1, ReLU; kernels 5, 3, 3 as in the reference model) and a
    linear classifier on the flattened features. Input ``(B, L)`` or ``(B, C, L)``.
    """

    def __init__(
        self,
        in_length: int = 40,
        num_classes: int = 10,
        channels: int = 25,
        kernel_sizes: Sequence[int] = (5, 3, 3),
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        _check_positive_int(in_length, "in_length")
        _check_positive_int(num_classes, "num_classes")
        _check_positive_int(channels, "channels")
        ks = _check_positive_ints(kernel_sizes, "kernel_sizes")
        if not ks:
            raise ValueError("kernel_sizes must name at least one convolution, got ()")
        self.in_channels = _check_positive_int(in_channels, "in_channels")
        self.in_length = in_length
        convs, c, length = [], in_channels, in_length
        for k in ks:
            convs.append(nn.Conv1d(c, channels, k, stride=2, padding=1))
            c, length = channels, _conv_out(length, k, 2, 1)
            if length < 1:
                raise ValueError(f"in_length={in_length} is too short for kernel_sizes={ks}")
        self.convs = nn.ModuleList(convs)
        self.linear = nn.Linear(channels * length, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of sequences ``(B, L)`` or ``(B, C, L)``."""
        h = x.reshape(-1, self.in_channels, self.in_length)  # (B, C, L) from (B, L) or (B, C, L)
        for conv in self.convs:
            h = torch.relu(conv(h))  # (B, channels, L')
        return self.linear(h.flatten(1))  # (B, num_classes)
