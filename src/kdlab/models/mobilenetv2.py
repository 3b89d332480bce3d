"""CIFAR MobileNetV2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks").

The variant of the distillation benchmark tables (CRD's ``mobile_half``, after Jin et al. 2019, "Knowledge
Distillation via Route Constrained Optimization"): the ImageNet block layout with width multiplier 0.5, expansion
6, a stride-2 3x3 stem and a 1280-channel 1x1 head conv, ~0.81M parameters at 100 classes.

Stages: ``("blocks.1", "blocks.2", "blocks.4", "conv2")``: the block groups that end a resolution (16, 8, 4 for a
32x32 input; the reference code's feature points) and the head conv, the last map before global pooling (2x2).
"""

from __future__ import annotations

from torch import Tensor, nn

from kdlab.models.cnn import conv_bn_relu, init_weights
from kdlab.models.registry import MODELS
from kdlab.models.spec import InputSpec

# (expansion or None for "use the model's", output channels, repeats, stride of the first repeat), per group.
_LAYOUT: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),  # stride 1 (ImageNet: 2) because CIFAR inputs are 7x smaller
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection; identity shortcut when the shape is kept."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.use_residual = stride == 1 and in_ch == out_ch
        self.conv = nn.Sequential(
            conv_bn_relu(in_ch, hidden, kernel=1),
            conv_bn_relu(hidden, hidden, kernel=3, stride=stride, groups=hidden),
            # No ReLU after the projection: the linear bottleneck of the paper (ReLU would destroy information
            # in the narrow space).
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class CifarMobileNetV2(nn.Module):
    """Stem conv, seven groups of inverted residual blocks, 1x1 head conv, global pooling, linear classifier."""

    def __init__(self, num_classes: int, in_channels: int, width_mult: float, expansion: int) -> None:
        super().__init__()
        in_ch = int(32 * width_mult)
        self.conv1 = conv_bn_relu(in_channels, in_ch, kernel=3, stride=2)
        groups: list[nn.Module] = []
        for group_expansion, channels, repeats, stride in _LAYOUT:
            out_ch = int(channels * width_mult)
            t = expansion if group_expansion is None else group_expansion
            blocks = [InvertedResidual(in_ch, out_ch, stride, t)]
            blocks += [InvertedResidual(out_ch, out_ch, 1, t) for _ in range(repeats - 1)]
            groups.append(nn.Sequential(*blocks))
            in_ch = out_ch
        self.blocks = nn.ModuleList(groups)
        # The head stays 1280 wide for multipliers <= 1, as in the paper.
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_bn_relu(in_ch, last, kernel=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        self.stage_names: tuple[str, ...] = ("blocks.1", "blocks.2", "blocks.4", "conv2")
        self.input_spec = InputSpec(32, in_channels)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for group in self.blocks:
            x = group(x)
        x = self.conv2(x)
        return self.classifier(self.pool(x).flatten(1))


@MODELS.register("mobilenetv2")
def mobilenetv2(
    num_classes: int = 10, in_channels: int = 3, width_mult: float = 0.5, expand_ratio: int = 6
) -> nn.Module:
    """CRD's ``mobile_half`` by default (width 0.5, expansion 6), ~0.81M parameters at 100 classes."""
    return CifarMobileNetV2(num_classes, in_channels, width_mult, expand_ratio)
