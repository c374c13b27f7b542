"""CIFAR-style convolutional networks: ResNet-20/56, a small VGG, a small MobileNetV2."""

from __future__ import annotations

from torch import Tensor, nn

from .small import _check_positive_int


def _check_width(width_mult: object) -> float:
    """Return ``width_mult`` as a positive float, else raise naming it."""
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not width_mult > 0:
        raise ValueError(f"width_mult must be a positive number, got {width_mult!r}")
    return float(width_mult)


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round a channel count to the nearest multiple of ``divisor`` without losing more than 10%."""
    out = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * v else out


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """A bias-free ``k``x``k`` convolution (same padding) followed by BatchNorm."""
    return [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity shortcut, or a 1x1 conv-BN shortcut where shapes change."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(c_in, c_out, 3, stride)
        self.conv2, self.bn2 = _conv_bn(c_out, c_out, 3)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:  # option B of He et al. 2016
            self.shortcut = nn.Sequential(*_conv_bn(c_in, c_out, 1, stride))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """Residual sum of the two-conv path and the shortcut, then ReLU."""
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return self.relu(h + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2 (He et al. 2016, "Deep Residual Learning", Sec. 4.2), option-B shortcuts.

    A 3x3 stem, three stages of ``n`` basic blocks with 16, 32, 64 channels (x ``width_mult``), the
    last two stages halving the resolution, then global average pooling and a linear head.
    """

    def __init__(self, depth: int = 20, in_channels: int = 3, num_classes: int = 10, width_mult: float = 1.0) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110 ...), got {depth!r}")
        _check_positive_int(in_channels, "in_channels")
        _check_positive_int(num_classes, "num_classes")
        widths = [max(1, round(c * _check_width(width_mult))) for c in (16, 32, 64)]
        n = (depth - 2) // 6
        self.stem = nn.Sequential(*_conv_bn(in_channels, widths[0], 3), nn.ReLU(inplace=True))
        blocks, c = [], widths[0]
        for i, w in enumerate(widths):
            stage = [BasicBlock(c if j == 0 else w, w, 2 if (i > 0 and j == 0) else 1) for j in range(n)]
            blocks.append(nn.Sequential(*stage))
            c = w
        self.layer1, self.layer2, self.layer3 = blocks
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, C, H, W)``."""
        h = self.layer3(self.layer2(self.layer1(self.stem(x))))  # (B, 64, H/4, W/4)
        return self.fc(self.pool(h).flatten(1))  # (B, num_classes)


VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG with BatchNorm (Simonyan & Zisserman 2015, configuration A = VGG-11), CIFAR-sized.

    Channel counts are scaled by ``width_mult`` (default 0.25, a small model); pools use ceil mode and
    an adaptive pool precedes the linear head, so inputs smaller than 32x32 work too.
    """

    def __init__(
        self, config: str = "vgg11", in_channels: int = 3, num_classes: int = 10, width_mult: float = 0.25
    ) -> None:
        super().__init__()
        if config not in VGG_CONFIGS:
            raise ValueError(f"config must be one of {', '.join(map(repr, VGG_CONFIGS))}, got {config!r}")
        _check_positive_int(in_channels, "in_channels")
        _check_positive_int(num_classes, "num_classes")
        w = _check_width(width_mult)
        layers: list[nn.Module] = []
        c = in_channels
        for item in VGG_CONFIGS[config]:
            if item == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                continue
            out = max(1, round(int(item) * w))
            layers += [*_conv_bn(c, out, 3), nn.ReLU(inplace=True)]
            c = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, C, H, W)``."""
        h = self.pool(self.features(x)).flatten(1)  # (B, C)
        return self.classifier(h)  # (B, num_classes)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection; residual when shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = c_in * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [*_conv_bn(c_in, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True)]
        layers += _conv_bn(hidden, c_out, 1)
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        """Block output, plus the input when the residual applies."""
        h = self.block(x)
        return x + h if self.use_residual else h


# (expand ratio t, channels c, repeats n, first stride s); CIFAR variant: strides 1 in the first two stages
MOBILENETV2_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                        (6, 160, 3, 2), (6, 320, 1, 1)]


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018, Table 2) for 32x32 inputs: stride-1 stem, inverted residuals.

    ``width_mult`` scales every width including the last 1x1 convolution (default 0.5, a small model).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width_mult: float = 0.5) -> None:
        super().__init__()
        _check_positive_int(in_channels, "in_channels")
        _check_positive_int(num_classes, "num_classes")
        w = _check_width(width_mult)
        c = _make_divisible(32 * w)
        layers: list[nn.Module] = [*_conv_bn(in_channels, c, 3), nn.ReLU6(inplace=True)]
        for t, ch, n, s in MOBILENETV2_SETTINGS:
            out = _make_divisible(ch * w)
            for i in range(n):
                layers.append(InvertedResidual(c, out, s if i == 0 else 1, t))
                c = out
        last = _make_divisible(1280 * w)
        layers += [*_conv_bn(c, last, 1), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, C, H, W)``."""
        h = self.pool(self.features(x)).flatten(1)  # (B, last)
        return self.classifier(h)  # (B, num_classes)
