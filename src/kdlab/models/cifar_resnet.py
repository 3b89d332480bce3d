"""CIFAR ResNets (He et al. 2016, "Deep Residual Learning for Image Recognition", section 4.2).

Depth 6n+2: a 3x3 stem, then three stages of n basic blocks at strides 1, 2, 2. As in the distillation benchmark
tables (CRD, Tian et al. 2020; mdistiller) the shortcut is a 1x1 conv + BN whenever the shape changes (option B),
not the paper's zero-padding (option A); that is what makes resnet20 0.28M and resnet8x4 1.23M parameters at 100
classes. ``resnet8x4`` / ``resnet32x4`` are the 4x-wide variants of CRD (stem 32, stages 64/128/256).

Stages: ``("layer1", "layer2", "layer3")``, each output after the block's final ReLU.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdlab.models.cnn import init_weights
from kdlab.models.registry import MODELS
from kdlab.models.spec import InputSpec


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv + BN) shortcut, ReLU after the sum."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            projection = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)
            self.shortcut = nn.Sequential(projection, nn.BatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def _stage(in_ch: int, out_ch: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` basic blocks; only the first one changes resolution or width."""
    layers = [BasicBlock(in_ch, out_ch, stride)] + [BasicBlock(out_ch, out_ch, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class CifarResNet(nn.Module):
    """Stem conv, three stages of basic blocks, global average pooling, linear classifier."""

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int, in_channels: int) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        stem, *stage_widths = widths
        self.conv1 = nn.Conv2d(in_channels, stem, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _stage(stem, stage_widths[0], blocks, stride=1)
        self.layer2 = _stage(stage_widths[0], stage_widths[1], blocks, stride=2)
        self.layer3 = _stage(stage_widths[1], stage_widths[2], blocks, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(stage_widths[2], num_classes)
        self.stage_names: tuple[str, ...] = ("layer1", "layer2", "layer3")
        self.input_spec = InputSpec(32, in_channels)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


@MODELS.register("resnet8")
def resnet8(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-8 (n=1), ~0.08M parameters at 100 classes."""
    return CifarResNet(8, _NARROW, num_classes, in_channels)


@MODELS.register("resnet14")
def resnet14(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-14 (n=2), ~0.18M parameters at 100 classes."""
    return CifarResNet(14, _NARROW, num_classes, in_channels)


@MODELS.register("resnet20")
def resnet20(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-20 (n=3), ~0.28M parameters at 100 classes."""
    return CifarResNet(20, _NARROW, num_classes, in_channels)


@MODELS.register("resnet32")
def resnet32(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-32 (n=5), ~0.47M parameters at 100 classes."""
    return CifarResNet(32, _NARROW, num_classes, in_channels)


@MODELS.register("resnet44")
def resnet44(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-44 (n=7), ~0.67M parameters at 100 classes."""
    return CifarResNet(44, _NARROW, num_classes, in_channels)


@MODELS.register("resnet56")
def resnet56(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-56 (n=9), ~0.86M parameters at 100 classes."""
    return CifarResNet(56, _NARROW, num_classes, in_channels)


@MODELS.register("resnet110")
def resnet110(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-110 (n=18), ~1.73M parameters at 100 classes."""
    return CifarResNet(110, _NARROW, num_classes, in_channels)


@MODELS.register("resnet8x4")
def resnet8x4(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """4x-wide ResNet-8 of CRD, ~1.23M parameters at 100 classes."""
    return CifarResNet(8, _WIDE, num_classes, in_channels)


@MODELS.register("resnet32x4")
def resnet32x4(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """4x-wide ResNet-32 of CRD, ~7.43M parameters at 100 classes."""
    return CifarResNet(32, _WIDE, num_classes, in_channels)
