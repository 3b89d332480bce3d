"""CIFAR ShuffleNet V2 (Ma et al. 2018, "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design").

The 1x variant of the CRD tables: a 1x1 stem of 24 channels (no stride, no max-pool), three stages of a
down-sampling unit plus 3/7/3 basic units of 116/232/464 channels, a 1x1 head conv to 1024 channels, ~1.35M
parameters at 100 classes. Basic units split the channels in half, transform one half and shuffle the two back.

Stages: ``("layer1", "layer2", "layer3", "conv2")`` (16, 8, 4, 4 for a 32x32 input); ``conv2`` is the head conv,
the last map before global pooling.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdlab.models.cnn import conv_bn_relu, init_weights
from kdlab.models.registry import MODELS
from kdlab.models.spec import InputSpec
from kdlab.models.shufflenetv1 import channel_shuffle


def _dw_bn(channels: int, stride: int) -> nn.Sequential:
    """3x3 depthwise conv + BN, no ReLU (as in the paper's units)."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels, bias=False),
        nn.BatchNorm2d(channels),
    )


class BasicUnit(nn.Module):
    """Channel split; one half goes 1x1 -> 3x3 depthwise -> 1x1, the other is kept; concat, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            conv_bn_relu(half, half, kernel=1), _dw_bn(half, 1), conv_bn_relu(half, half, kernel=1)
        )

    def forward(self, x: Tensor) -> Tensor:
        kept, transformed = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([kept, self.branch(transformed)], 1), 2)


class DownUnit(nn.Module):
    """Both branches see the whole input at stride 2; their concat doubles the channels (or sets ``out_ch``)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        mid = out_ch // 2
        self.left = nn.Sequential(_dw_bn(in_ch, 2), conv_bn_relu(in_ch, mid, kernel=1))
        self.right = nn.Sequential(conv_bn_relu(in_ch, mid, kernel=1), _dw_bn(mid, 2), conv_bn_relu(mid, mid, kernel=1))

    def forward(self, x: Tensor) -> Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)


def _stage(in_ch: int, out_ch: int, units: int) -> nn.Sequential:
    """A down-sampling unit followed by ``units`` basic units."""
    return nn.Sequential(DownUnit(in_ch, out_ch), *[BasicUnit(out_ch) for _ in range(units)])


class CifarShuffleNetV2(nn.Module):
    """1x1 stem, three stages, 1x1 head conv, global average pooling, linear classifier."""

    def __init__(
        self, num_classes: int, in_channels: int, widths: tuple[int, int, int, int], units: tuple[int, int, int]
    ) -> None:
        super().__init__()
        stem = 24
        self.conv1 = conv_bn_relu(in_channels, stem, kernel=1)
        self.layer1 = _stage(stem, widths[0], units[0])
        self.layer2 = _stage(widths[0], widths[1], units[1])
        self.layer3 = _stage(widths[1], widths[2], units[2])
        self.conv2 = conv_bn_relu(widths[2], widths[3], kernel=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(widths[3], num_classes)
        self.stage_names: tuple[str, ...] = ("layer1", "layer2", "layer3", "conv2")
        self.input_spec = InputSpec(32, in_channels)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.linear(self.pool(self.conv2(x)).flatten(1))


@MODELS.register("shufflenetv2")
def shufflenetv2(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ShuffleNet V2 1x of the CRD tables, ~1.35M parameters at 100 classes."""
    return CifarShuffleNetV2(num_classes, in_channels, widths=(116, 232, 464, 1024), units=(3, 7, 3))
