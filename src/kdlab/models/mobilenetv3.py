"""MobileNetV3 small/large (Howard et al., "Searching for MobileNetV3", ICCV 2019, arXiv:1905.02244).

Module, parameter and buffer names match torchvision's ``mobilenet_v3_small/large`` exactly (``features.N.block.M``,
``classifier.3``), so a torchvision state dict loads with ``strict=True``. As in torchvision: hard-swish and ReLU
activations, squeeze-excitation with a hard-sigmoid gate, BatchNorm with eps 0.001 and momentum 0.01.
``pre_logits_name`` names the module whose output is the feature the last Linear reads, before the dropout
(``classifier.1``); the dropout is not in place so that feature stays unmasked (same values and state dict).
This module also holds the conv-norm-activation and squeeze-excitation layers that EfficientNet shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from torch import Tensor, nn

from kdlab.models.registry import MODELS
from kdlab.models.spec import normalized_spec

ModuleFactory = Callable[..., nn.Module]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` without dropping more than 10% (TF MobileNet rule)."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvNormActivation(nn.Sequential):
    """Conv (no bias), BatchNorm, optional activation; children ``0``, ``1``, ``2`` as torchvision's
    ``Conv2dNormActivation`` so the state-dict keys agree."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        norm_layer: ModuleFactory = nn.BatchNorm2d,
        activation_layer: ModuleFactory | None = nn.ReLU,
    ) -> None:
        padding = (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False),
            norm_layer(out_channels),
        ]
        if activation_layer is not None:
            layers.append(activation_layer(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels


class SqueezeExcitation(nn.Module):
    """Channel gating (Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018) with 1x1 convs ``fc1``/``fc2``."""

    def __init__(
        self,
        input_channels: int,
        squeeze_channels: int,
        activation: ModuleFactory = nn.ReLU,
        scale_activation: ModuleFactory = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return x * self.scale_activation(scale)


def stage_ends(strides: list[int]) -> tuple[str, ...]:
    """``features.i`` for each module that is the last one at its resolution (the next one strides), plus the last."""
    ends = [i for i in range(len(strides) - 1) if strides[i + 1] > 1] + [len(strides) - 1]
    return tuple(f"features.{i}" for i in ends)


@dataclass(frozen=True)
class BneckConfig:
    """One bottleneck row of the paper's Tables 1 and 2."""

    input_channels: int
    kernel: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    use_hs: bool
    stride: int


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise (kxk), optional SE, project (1x1, linear); residual when shapes allow."""

    def __init__(self, cnf: BneckConfig, norm_layer: ModuleFactory) -> None:
        super().__init__()
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        act = nn.Hardswish if cnf.use_hs else nn.ReLU
        layers: list[nn.Module] = []
        if cnf.expanded_channels != cnf.input_channels:
            layers.append(ConvNormActivation(cnf.input_channels, cnf.expanded_channels, 1, 1, 1, norm_layer, act))
        layers.append(
            ConvNormActivation(
                cnf.expanded_channels, cnf.expanded_channels, cnf.kernel, cnf.stride, cnf.expanded_channels,
                norm_layer, act,
            )
        )
        if cnf.use_se:
            squeeze = make_divisible(cnf.expanded_channels // 4, 8)
            layers.append(SqueezeExcitation(cnf.expanded_channels, squeeze, scale_activation=nn.Hardsigmoid))
        layers.append(ConvNormActivation(cnf.expanded_channels, cnf.out_channels, 1, 1, 1, norm_layer, None))
        self.block = nn.Sequential(*layers)
        self.out_channels = cnf.out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


# (in, kernel, expanded, out, SE, hard-swish, stride): torchvision's tables at width 1.0.
_LARGE = [
    (16, 3, 16, 16, False, False, 1), (16, 3, 64, 24, False, False, 2), (24, 3, 72, 24, False, False, 1),
    (24, 5, 72, 40, True, False, 2), (40, 5, 120, 40, True, False, 1), (40, 5, 120, 40, True, False, 1),
    (40, 3, 240, 80, False, True, 2), (80, 3, 200, 80, False, True, 1), (80, 3, 184, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1), (80, 3, 480, 112, True, True, 1), (112, 3, 672, 112, True, True, 1),
    (112, 5, 672, 160, True, True, 2), (160, 5, 960, 160, True, True, 1), (160, 5, 960, 160, True, True, 1),
]
_SMALL = [
    (16, 3, 16, 16, True, False, 2), (16, 3, 72, 24, False, False, 2), (24, 3, 88, 24, False, False, 1),
    (24, 5, 96, 40, True, True, 2), (40, 5, 240, 40, True, True, 1), (40, 5, 240, 40, True, True, 1),
    (40, 5, 120, 48, True, True, 1), (48, 5, 144, 48, True, True, 1), (48, 5, 288, 96, True, True, 2),
    (96, 5, 576, 96, True, True, 1), (96, 5, 576, 96, True, True, 1),
]


class MobileNetV3(nn.Module):
    """Stem, inverted-residual blocks, 1x1 head conv (6x widening), then Linear-hardswish-dropout-Linear."""

    def __init__(
        self,
        setting: list[BneckConfig],
        last_channel: int,
        num_classes: int,
        in_channels: int = 3,
        small_input: bool = False,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
        # small_input: stride 1 in the stem keeps the kernel shape, so ImageNet weights still load unchanged.
        stem_stride = 1 if small_input else 2
        first = setting[0].input_channels
        layers: list[nn.Module] = [
            ConvNormActivation(in_channels, first, 3, stem_stride, 1, norm_layer, nn.Hardswish)
        ]
        layers += [InvertedResidual(cnf, norm_layer) for cnf in setting]
        head_in = setting[-1].out_channels
        layers.append(ConvNormActivation(head_in, 6 * head_in, 1, 1, 1, norm_layer, nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(6 * head_in, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout),  # not in place (torchvision's is): classifier.1's output must stay unmasked
            nn.Linear(last_channel, num_classes),
        )
        self.stage_names: tuple[str, ...] = stage_ends([stem_stride] + [c.stride for c in setting] + [1])
        self.pre_logits_name = "classifier.1"  # the last hidden feature (hard-swish output), before the dropout
        self.input_spec = normalized_spec(32 if small_input else 224, in_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialization, so kdlab and torchvision models start from the same distribution.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


@MODELS.register("mobilenetv3_small")
def mobilenetv3_small(
    num_classes: int = 10, in_channels: int = 3, small_input: bool = False, dropout: float = 0.2
) -> MobileNetV3:
    """MobileNetV3-Small (Howard et al. 2019); torchvision ``mobilenet_v3_small``-compatible state dict."""
    setting = [BneckConfig(*row) for row in _SMALL]
    return MobileNetV3(setting, 1024, num_classes, in_channels, small_input, dropout)


@MODELS.register("mobilenetv3_large")
def mobilenetv3_large(
    num_classes: int = 10, in_channels: int = 3, small_input: bool = False, dropout: float = 0.2
) -> MobileNetV3:
    """MobileNetV3-Large (Howard et al. 2019); torchvision ``mobilenet_v3_large``-compatible state dict."""
    setting = [BneckConfig(*row) for row in _LARGE]
    return MobileNetV3(setting, 1280, num_classes, in_channels, small_input, dropout)
