"""Small plain CNN students (``cnn_small``, ``cnn_tiny``) and the weight init shared by the CIFAR family.

``cnn_small`` is the usual two-conv Fashion-MNIST baseline (conv-BN-ReLU-pool twice, then a small MLP head), the
kind listed in the Fashion-MNIST benchmark table (Xiao et al. 2017: "2 conv, <100k parameters", about 92.5%); the
classic flatten is replaced by a 4x4 adaptive pool so any input size works. ``cnn_tiny`` is a deliberately weak
student (~1.4k parameters at 1x28x28, 10 classes) for tests and for "student far below teacher" experiments.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdlab.models.registry import MODELS
from kdlab.models.spec import InputSpec


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convolutions (fan_out, as He et al. 2015), BatchNorm weight 1 / bias 0, zero linear bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias: the BatchNorm that follows has one) -> BatchNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class PlainCNN(nn.Module):
    """Two conv-BN-ReLU-maxpool blocks, adaptive pooling, then a linear or one-hidden-layer head."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        widths: tuple[int, int],
        pool_size: int,
        hidden: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.block1 = nn.Sequential(conv_bn_relu(in_channels, widths[0]), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(conv_bn_relu(widths[0], widths[1]), nn.MaxPool2d(2))
        # A small fixed grid (not 1x1) keeps some spatial layout for the head, like the classic flatten does.
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        features = widths[1] * pool_size * pool_size
        if hidden > 0:
            self.head: nn.Module = nn.Sequential(
                nn.Dropout(dropout), nn.Linear(features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
            )
        else:
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(features, num_classes))
        self.stage_names: tuple[str, ...] = ("block1", "block2")
        self.input_spec = InputSpec(32, in_channels)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block2(self.block1(x))
        return self.head(self.pool(x).flatten(1))


@MODELS.register("cnn_small")
def cnn_small(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> nn.Module:
    """Two convs (32, 64 channels) and a 64-unit hidden layer: ~86k parameters for 1x28x28, 10 classes."""
    return PlainCNN(num_classes, in_channels, widths=(32, 64), pool_size=4, hidden=64, dropout=dropout)


@MODELS.register("cnn_tiny")
def cnn_tiny(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Two convs (8, 16 channels), global pooling and a linear head: ~1.4k parameters."""
    return PlainCNN(num_classes, in_channels, widths=(8, 16), pool_size=1, hidden=0, dropout=0.0)
