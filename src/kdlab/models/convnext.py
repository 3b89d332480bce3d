"""ConvNeXt (Liu et al., "A ConvNet for the 2020s", CVPR 2022, arXiv:2201.03545).

Module and parameter names are timm's (``stem.0``/``stem.1``, ``stages.S.downsample.{0,1}``,
``stages.S.blocks.B.{conv_dw, norm, mlp.fc1, mlp.fc2, gamma}``, ``head.norm``, ``head.fc``), so timm's ``convnext_*``
state dicts load unchanged. As timm's default: a 4x4/4 patchify stem plus LayerNorm, blocks of 7x7 depthwise conv ->
LayerNorm (channels last, eps 1e-6) -> Linear x4 -> GELU -> Linear, scaled per channel by ``gamma`` (layer scale,
init 1e-6) on a residual with stochastic depth; between stages LayerNorm + 2x2/2 conv; head: global average pool ->
LayerNorm -> Linear. ``stage_names`` are ``stages.0`` .. ``stages.3``; the embedding is ``"head.fc:input"``.

``convnext_atto_32`` is a CPU-sized variant for 32 px images (timm's ``convnext_atto`` widths, a 2x2 stem so the
last stage is 2x2 rather than 1x1).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdlab.models.layers import LayerNorm2d, Mlp, drop_path_or_identity, drop_path_rates
from kdlab.models.registry import MODELS
from kdlab.models.spec import InputSpec, normalized_spec

LN_EPS = 1e-6


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 -> LayerNorm -> inverted-bottleneck MLP, layer-scaled by ``gamma``, plus the input."""

    def __init__(self, dim: int, drop_path: float = 0.0, ls_init_value: float = 1e-6, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, 4 * dim)
        self.gamma = nn.Parameter(torch.full((dim,), ls_init_value))
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        y = self.mlp(self.norm(self.conv_dw(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return x + self.drop_path(y * self.gamma.reshape(1, -1, 1, 1))


class ConvNeXtStage(nn.Module):
    """Optional downsampling (LayerNorm + 2x2/2 conv) then ``depth`` blocks."""

    def __init__(self, in_dim: int, out_dim: int, depth: int, downsample: bool, rates: list[float],
                 ls_init_value: float) -> None:
        super().__init__()
        if downsample:
            self.downsample: nn.Module = nn.Sequential(LayerNorm2d(in_dim, LN_EPS),
                                                       nn.Conv2d(in_dim, out_dim, kernel_size=2, stride=2))
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[ConvNeXtBlock(out_dim, rates[i], ls_init_value) for i in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class NormHead(nn.Module):
    """Global average pool -> LayerNorm -> dropout -> Linear (timm ``NormMlpClassifierHead`` without hidden layer)."""

    def __init__(self, dim: int, num_classes: int, drop_rate: float) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim, LN_EPS)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x.mean((2, 3), keepdim=True)).flatten(1)
        return self.fc(self.drop(x))


class ConvNeXt(nn.Module):
    """ConvNeXt trunk: patchify stem, four stages, normalized pooled head; ``forward`` returns logits."""

    def __init__(self, depths: tuple[int, ...], dims: tuple[int, ...], num_classes: int = 1000, in_channels: int = 3,
                 patch_size: int = 4, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 ls_init_value: float = 1e-6, input_spec: InputSpec | None = None, img_size: int = 224) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, dims[0], kernel_size=patch_size, stride=patch_size),
                                  LayerNorm2d(dims[0], LN_EPS))
        rates = drop_path_rates(drop_path_rate, sum(depths))
        stages, start = [], 0
        for i, depth in enumerate(depths):
            stages.append(ConvNeXtStage(dims[max(i - 1, 0)], dims[i], depth, i > 0, rates[start:start + depth],
                                        ls_init_value))
            start += depth
        self.stages = nn.Sequential(*stages)
        self.norm_pre = nn.Identity()
        self.head = NormHead(dims[-1], num_classes, drop_rate)
        self.stage_names: tuple[str, ...] = tuple(f"stages.{i}" for i in range(len(depths)))
        self.input_spec = input_spec or InputSpec(img_size, in_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        # timm's: convs and Linears truncated normal (std 0.02), zero biases; LayerNorm ones / zeros.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.norm_pre(self.stages(self.stem(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


def _imagenet(depths: tuple[int, ...], num_classes: int, in_channels: int, img_size: int, drop_rate: float,
              drop_path_rate: float) -> ConvNeXt:
    return ConvNeXt(depths, (96, 192, 384, 768), num_classes, in_channels, 4, drop_rate, drop_path_rate,
                    input_spec=normalized_spec(img_size, in_channels), img_size=img_size)


@MODELS.register("convnext_tiny")
def convnext_tiny(num_classes: int = 1000, in_channels: int = 3, img_size: int = 224, drop_rate: float = 0.0,
                  drop_path_rate: float = 0.0) -> ConvNeXt:
    """ConvNeXt-T (depths 3-3-9-3, dims 96..768); timm ``convnext_tiny``-compatible state dict."""
    return _imagenet((3, 3, 9, 3), num_classes, in_channels, img_size, drop_rate, drop_path_rate)


@MODELS.register("convnext_small")
def convnext_small(num_classes: int = 1000, in_channels: int = 3, img_size: int = 224, drop_rate: float = 0.0,
                   drop_path_rate: float = 0.0) -> ConvNeXt:
    """ConvNeXt-S (depths 3-3-27-3, dims 96..768); timm ``convnext_small``-compatible state dict."""
    return _imagenet((3, 3, 27, 3), num_classes, in_channels, img_size, drop_rate, drop_path_rate)


@MODELS.register("convnext_atto_32")
def convnext_atto_32(num_classes: int = 10, in_channels: int = 3, img_size: int = 32,
                     drop_path_rate: float = 0.0) -> ConvNeXt:
    """A CPU-sized ConvNeXt for 32 px images: timm ``convnext_atto``'s depths 2-2-6-2 and dims 40..320, with a 2x2
    stem (32 px -> 16, 8, 4, 2) and layer scale starting at 1e-6 as ConvNeXt's (~3.4M params)."""
    return ConvNeXt((2, 2, 6, 2), (40, 80, 160, 320), num_classes, in_channels, 2, 0.0, drop_path_rate,
                    img_size=img_size)
