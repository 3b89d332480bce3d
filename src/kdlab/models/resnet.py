"""ImageNet ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, arXiv:1512.03385).

Module, parameter and buffer names match torchvision's ``resnet18/34/50`` exactly, so a torchvision state dict loads
with ``strict=True`` (see ``kdlab.models.weights.load_pretrained``). The bottleneck puts its stride on the 3x3 conv
("ResNet v1.5"), as torchvision does. ``small_input=True`` swaps the 7x7/2 stem and max-pool for a 3x3/1 conv, the
usual adaptation for 32x32 images; ``load_pretrained`` then resamples ImageNet's 7x7 ``conv1`` kernels to 3x3,
keeping each filter's sum (see ``kdlab.models.weights``).
"""

from __future__ import annotations

from torch import Tensor, nn

from kdlab.models.registry import MODELS
from kdlab.models.spec import normalized_spec

RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3


class ResNet(nn.Module):
    """The ImageNet ResNet trunk; ``forward`` returns logits."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        num_classes: int,
        in_channels: int = 3,
        small_input: bool = False,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.inplanes = 64
        if small_input:
            # 32x32 inputs: a 7x7/2 conv plus a max-pool would leave layer4 at 1x1, so keep full resolution.
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        self.stage_names: tuple[str, ...] = RESNET_STAGES
        self.input_spec = normalized_spec(32 if small_input else 224, in_channels)
        self._init_weights(zero_init_residual)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # torchvision's initialization: He-normal (fan_out) convs, unit BN; the Linear keeps PyTorch's default.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Goyal et al. 2017: each residual branch starts as zero, so every block begins as the identity.
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


@MODELS.register("resnet18")
def resnet18(
    num_classes: int = 10, in_channels: int = 3, small_input: bool = False, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-18 (He et al. 2016); torchvision-compatible state dict."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, small_input, zero_init_residual)


@MODELS.register("resnet34")
def resnet34(
    num_classes: int = 10, in_channels: int = 3, small_input: bool = False, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-34 (He et al. 2016); torchvision-compatible state dict."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels, small_input, zero_init_residual)


@MODELS.register("resnet50")
def resnet50(
    num_classes: int = 10, in_channels: int = 3, small_input: bool = False, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-50 with bottleneck blocks, stride on the 3x3 (v1.5, as torchvision); torchvision-compatible."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels, small_input, zero_init_residual)
