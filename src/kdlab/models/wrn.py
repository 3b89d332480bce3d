"""Wide ResNets (Zagoruyko & Komodakis 2016, "Wide Residual Networks"), CIFAR variant.

``wrn_D_K``: depth D = 6n+4, widening factor K; a 3x3 stem of 16 channels, then three stages of n pre-activation
blocks (BN-ReLU-conv, twice) of 16K, 32K, 64K channels at strides 1, 2, 2, a final BN-ReLU, global pooling. The
shortcut is a bare 1x1 conv when the shape changes and, as in the reference code, it reads the block's activated
input. Dropout between the two convs is an option (the paper's 0.3 for some runs; the KD tables use 0).

Stages: ``("block1", "block2", "block3")``. ``block3`` ends with the network's final BN-ReLU so that its output is
the feature map that is pooled (pre-activation blocks otherwise emit un-normalised sums).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from kdlab.models.cnn import init_weights
from kdlab.models.registry import MODELS
from kdlab.models.spec import InputSpec


class WideBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3, BN-ReLU-(dropout)-conv3x3, plus a shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)  # safe: it only ever overwrites fresh BatchNorm outputs
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        activated = self.relu(self.bn1(x))
        out = self.conv1(activated)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        residual = x if self.shortcut is None else self.shortcut(activated)
        return out + residual


def _stage(in_ch: int, out_ch: int, blocks: int, stride: int, dropout: float, final_norm: bool) -> nn.Sequential:
    """``blocks`` wide blocks; with ``final_norm`` the network's closing BN-ReLU is appended."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for b in range(blocks):
        layers[str(b)] = WideBlock(in_ch if b == 0 else out_ch, out_ch, stride if b == 0 else 1, dropout)
    if final_norm:
        layers["bn"] = nn.BatchNorm2d(out_ch)
        layers["relu"] = nn.ReLU(inplace=True)
    return nn.Sequential(layers)


class WideResNet(nn.Module):
    """Stem conv, three stages of wide pre-activation blocks, global average pooling, linear classifier."""

    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int, dropout: float) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        blocks = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.block1 = _stage(widths[0], widths[1], blocks, 1, dropout, final_norm=False)
        self.block2 = _stage(widths[1], widths[2], blocks, 2, dropout, final_norm=False)
        self.block3 = _stage(widths[2], widths[3], blocks, 2, dropout, final_norm=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        self.stage_names: tuple[str, ...] = ("block1", "block2", "block3")
        self.input_spec = InputSpec(32, in_channels)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


@MODELS.register("wrn_16_1")
def wrn_16_1(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> nn.Module:
    """WRN-16-1, ~0.18M parameters at 100 classes."""
    return WideResNet(16, 1, num_classes, in_channels, dropout)


@MODELS.register("wrn_16_2")
def wrn_16_2(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> nn.Module:
    """WRN-16-2, ~0.70M parameters at 100 classes."""
    return WideResNet(16, 2, num_classes, in_channels, dropout)


@MODELS.register("wrn_40_1")
def wrn_40_1(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> nn.Module:
    """WRN-40-1, ~0.57M parameters at 100 classes."""
    return WideResNet(40, 1, num_classes, in_channels, dropout)


@MODELS.register("wrn_40_2")
def wrn_40_2(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> nn.Module:
    """WRN-40-2, ~2.25M parameters at 100 classes (the usual CRD teacher)."""
    return WideResNet(40, 2, num_classes, in_channels, dropout)


@MODELS.register("wrn_40_4")
def wrn_40_4(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> nn.Module:
    """WRN-40-4, ~8.97M parameters at 100 classes."""
    return WideResNet(40, 4, num_classes, in_channels, dropout)
