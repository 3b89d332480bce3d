"""EfficientNet-B0/B2 (Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019, arXiv:1905.11946).

Module, parameter and buffer names match torchvision's ``efficientnet_b0/b2`` exactly (``features.S.B.block.M``,
``classifier.1``), so a torchvision state dict loads with ``strict=True``. As in torchvision: SiLU activations,
squeeze-excitation with a sigmoid gate, PyTorch-default BatchNorm (eps 1e-5, momentum 0.1; torchvision switches to
eps 1e-3 only from B5 on), and stochastic depth (Huang et al. 2016) whose drop rate grows linearly with block index
from 0 to ``stochastic_depth_prob``, applied in training only. ``pre_logits_name`` names the module whose output is
the pooled feature before the classifier's dropout (``avgpool``); the dropout is not in place so that feature stays
unmasked (same values and state dict as torchvision's in-place one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from kdlab.models.mobilenetv3 import ConvNormActivation, SqueezeExcitation, make_divisible, stage_ends
from kdlab.models.registry import MODELS
from kdlab.models.spec import normalized_spec


class StochasticDepth(nn.Module):
    """Drop the residual branch per sample ("row" mode) with probability ``p``, rescaling survivors by 1/(1-p)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"stochastic depth probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        noise = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)
        noise.bernoulli_(survival)
        if survival > 0.0:
            noise.div_(survival)
        return x * noise

    def extra_repr(self) -> str:
        return f"p={self.p}"


@dataclass(frozen=True)
class MBConvConfig:
    """One stage of the paper's Table 1, already scaled by width and depth multipliers."""

    expand_ratio: int
    kernel: int
    stride: int
    input_channels: int
    out_channels: int
    num_layers: int


class MBConv(nn.Module):
    """Mobile inverted bottleneck: expand 1x1, depthwise kxk, SE, project 1x1; stochastic-depth residual."""

    def __init__(self, cnf: MBConvConfig, stochastic_depth_prob: float) -> None:
        super().__init__()
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        expanded = make_divisible(cnf.input_channels * cnf.expand_ratio, 8)
        layers: list[nn.Module] = []
        if expanded != cnf.input_channels:
            layers.append(ConvNormActivation(cnf.input_channels, expanded, 1, activation_layer=nn.SiLU))
        layers.append(
            ConvNormActivation(expanded, expanded, cnf.kernel, cnf.stride, groups=expanded, activation_layer=nn.SiLU)
        )
        # The SE bottleneck is a quarter of the block's *input* width, not of the expanded width.
        squeeze = max(1, cnf.input_channels // 4)
        layers.append(SqueezeExcitation(expanded, squeeze, activation=partial(nn.SiLU, inplace=True)))
        layers.append(ConvNormActivation(expanded, cnf.out_channels, 1, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob)
        self.out_channels = cnf.out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        if self.use_res_connect:
            out = self.stochastic_depth(out) + x
        return out


# (expand ratio, kernel, stride, in, out, layers) for B0; other variants scale width and depth.
_B0_STAGES = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
              (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]


def _scaled_stages(width_mult: float, depth_mult: float) -> list[MBConvConfig]:
    return [
        MBConvConfig(e, k, s, make_divisible(cin * width_mult, 8), make_divisible(cout * width_mult, 8),
                     int(math.ceil(n * depth_mult)))
        for e, k, s, cin, cout, n in _B0_STAGES
    ]


class EfficientNet(nn.Module):
    """Stem, seven MBConv stages, 1x1 head conv (4x widening), dropout and a Linear classifier."""

    def __init__(
        self,
        stages: list[MBConvConfig],
        num_classes: int,
        in_channels: int = 3,
        small_input: bool = False,
        dropout: float = 0.2,
        stochastic_depth_prob: float = 0.2,
    ) -> None:
        super().__init__()
        # small_input: stride 1 in the stem keeps the kernel shape, so ImageNet weights still load unchanged.
        stem_stride = 1 if small_input else 2
        layers: list[nn.Module] = [
            ConvNormActivation(in_channels, stages[0].input_channels, 3, stem_stride, activation_layer=nn.SiLU)
        ]
        total_blocks = sum(cnf.num_layers for cnf in stages)
        block_id = 0
        for cnf in stages:
            blocks: list[nn.Module] = []
            for i in range(cnf.num_layers):
                # Only a stage's first block changes width and stride; the rate grows with depth over the network.
                block_cnf = cnf if i == 0 else MBConvConfig(
                    cnf.expand_ratio, cnf.kernel, 1, cnf.out_channels, cnf.out_channels, cnf.num_layers
                )
                blocks.append(MBConv(block_cnf, stochastic_depth_prob * block_id / total_blocks))
                block_id += 1
            layers.append(nn.Sequential(*blocks))
        head_in = stages[-1].out_channels
        layers.append(ConvNormActivation(head_in, 4 * head_in, 1, activation_layer=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        # Not in place (torchvision's is): the pooled feature that pre_logits_name names must stay unmasked.
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(4 * head_in, num_classes))
        self.stage_names: tuple[str, ...] = stage_ends([stem_stride] + [c.stride for c in stages] + [1])
        self.pre_logits_name = "avgpool"  # the pooled feature (N×C×1×1), before the classifier's dropout
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
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


@MODELS.register("efficientnet_b0")
def efficientnet_b0(
    num_classes: int = 10,
    in_channels: int = 3,
    small_input: bool = False,
    dropout: float = 0.2,
    stochastic_depth_prob: float = 0.2,
) -> EfficientNet:
    """EfficientNet-B0 (width 1.0, depth 1.0, dropout 0.2); torchvision ``efficientnet_b0``-compatible."""
    return EfficientNet(_scaled_stages(1.0, 1.0), num_classes, in_channels, small_input, dropout, stochastic_depth_prob)


@MODELS.register("efficientnet_b2")
def efficientnet_b2(
    num_classes: int = 10,
    in_channels: int = 3,
    small_input: bool = False,
    dropout: float = 0.3,
    stochastic_depth_prob: float = 0.2,
) -> EfficientNet:
    """EfficientNet-B2 (width 1.1, depth 1.2, dropout 0.3); torchvision ``efficientnet_b2``-compatible."""
    return EfficientNet(_scaled_stages(1.1, 1.2), num_classes, in_channels, small_input, dropout, stochastic_depth_prob)
