"""CIFAR ShuffleNet V1 (Zhang et al. 2018, "ShuffleNet: An Extremely Efficient CNN for Mobile Devices").

The variant of the CRD tables: a 1x1 stem of 24 channels (no stride, no max-pool: CIFAR inputs are small), three
stages of 4/8/4 bottleneck units with 3 groups and 240/480/960 output channels, ~0.95M parameters at 100 classes.
A stage's first unit halves the resolution and concatenates an average-pooled shortcut, so its residual branch
only produces ``out - in`` channels.

Stages: ``("layer1", "layer2", "layer3")`` (16, 8, 4 for a 32x32 input).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdlab.models.cnn import init_weights
from kdlab.models.registry import MODELS
from kdlab.models.spec import InputSpec


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` groups, so the next grouped conv sees every group's output."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """Grouped 1x1 -> shuffle -> 3x3 depthwise -> grouped 1x1, plus identity (or avg-pool + concat) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int, group_first: bool) -> None:
        super().__init__()
        self.stride = stride
        branch_out = out_ch - in_ch if stride == 2 else out_ch
        mid = branch_out // 4
        # The paper skips grouping on the very first pointwise conv: the stem's 24 channels are too few to split.
        self.first_groups = groups if group_first else 1
        self.conv1 = nn.Conv2d(in_ch, mid, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, branch_out, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        # ReLU after the depthwise conv as in the CRD variant (the paper has none there).
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = self.shortcut(x)
        out = torch.cat([out, residual], 1) if self.stride == 2 else out + residual
        return self.relu(out)


def _stage(in_ch: int, out_ch: int, units: int, groups: int, group_first: bool) -> nn.Sequential:
    """A strided concat unit followed by ``units - 1`` identity units."""
    layers = [ShuffleUnit(in_ch, out_ch, 2, groups, group_first)]
    layers += [ShuffleUnit(out_ch, out_ch, 1, groups, True) for _ in range(units - 1)]
    return nn.Sequential(*layers)


class CifarShuffleNetV1(nn.Module):
    """1x1 stem, three stages of shuffle units, global average pooling, linear classifier."""

    def __init__(
        self, num_classes: int, in_channels: int, widths: tuple[int, int, int], units: tuple[int, int, int], groups: int
    ) -> None:
        super().__init__()
        stem = 24
        self.conv1 = nn.Conv2d(in_channels, stem, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _stage(stem, widths[0], units[0], groups, group_first=False)
        self.layer2 = _stage(widths[0], widths[1], units[1], groups, group_first=True)
        self.layer3 = _stage(widths[1], widths[2], units[2], groups, group_first=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(widths[2], num_classes)
        self.stage_names: tuple[str, ...] = ("layer1", "layer2", "layer3")
        self.input_spec = InputSpec(32, in_channels)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.pool(x).flatten(1))


@MODELS.register("shufflenetv1")
def shufflenetv1(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ShuffleNet V1 (g=3, 1x) of the CRD tables, ~0.95M parameters at 100 classes."""
    return CifarShuffleNetV1(num_classes, in_channels, widths=(240, 480, 960), units=(4, 8, 4), groups=3)
