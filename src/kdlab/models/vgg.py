"""CIFAR VGG with BatchNorm (Simonyan & Zisserman 2015, "Very Deep Convolutional Networks"), as in the CRD tables.

Five blocks of 3x3 conv-BN-ReLU layers (64, 128, 256, 512, 512 channels), a 2x2 max-pool before blocks 1-3, global
average pooling and a single linear classifier (the CIFAR variant drops the 4096-wide FC layers and the last
pool, so block4 runs at the resolution of block3: 4x4 for a 32x32 input). ``vgg8`` is CRD's one-conv-per-block
student.

Stages: ``("block0", ..., "block4")``; blocks 1-3 start with their max-pool, so a hook reads each block's output.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdlab.models.cnn import conv_bn_relu, init_weights
from kdlab.models.registry import MODELS
from kdlab.models.spec import InputSpec

# Channels of each conv, per block.
_VGG8 = ((64,), (128,), (256,), (512,), (512,))
_VGG11 = ((64,), (128,), (256, 256), (512, 512), (512, 512))
_VGG13 = ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512))
_VGG16 = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
_VGG19 = ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4)


def _block(in_ch: int, widths: tuple[int, ...], pool: bool) -> nn.Sequential:
    """Optional 2x2 max-pool, then one conv-BN-ReLU per entry of ``widths``."""
    layers: list[nn.Module] = [nn.MaxPool2d(2)] if pool else []
    for width in widths:
        layers.append(conv_bn_relu(in_ch, width))
        in_ch = width
    return nn.Sequential(*layers)


class CifarVGG(nn.Module):
    """Five conv-BN-ReLU blocks, max-pools between the first four, global average pooling, linear classifier."""

    def __init__(self, config: tuple[tuple[int, ...], ...], num_classes: int, in_channels: int) -> None:
        super().__init__()
        if len(config) != 5:
            raise ValueError(f"CIFAR VGG has 5 blocks, got {len(config)}")
        ends = [in_channels] + [widths[-1] for widths in config]
        self.block0 = _block(ends[0], config[0], pool=False)
        self.block1 = _block(ends[1], config[1], pool=True)
        self.block2 = _block(ends[2], config[2], pool=True)
        self.block3 = _block(ends[3], config[3], pool=True)
        self.block4 = _block(ends[4], config[4], pool=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(ends[5], num_classes)
        self.stage_names: tuple[str, ...] = ("block0", "block1", "block2", "block3", "block4")
        self.input_spec = InputSpec(32, in_channels)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block4(self.block3(self.block2(self.block1(self.block0(x)))))
        return self.classifier(self.pool(x).flatten(1))


@MODELS.register("vgg8")
def vgg8(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """VGG-8 (one conv per block), ~3.96M parameters at 100 classes."""
    return CifarVGG(_VGG8, num_classes, in_channels)


@MODELS.register("vgg11")
def vgg11(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """VGG-11, ~9.27M parameters at 100 classes."""
    return CifarVGG(_VGG11, num_classes, in_channels)


@MODELS.register("vgg13")
def vgg13(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """VGG-13, ~9.46M parameters at 100 classes (the usual CRD teacher for vgg8)."""
    return CifarVGG(_VGG13, num_classes, in_channels)


@MODELS.register("vgg16")
def vgg16(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """VGG-16, ~14.8M parameters at 100 classes."""
    return CifarVGG(_VGG16, num_classes, in_channels)


@MODELS.register("vgg19")
def vgg19(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """VGG-19, ~20.1M parameters at 100 classes."""
    return CifarVGG(_VGG19, num_classes, in_channels)
