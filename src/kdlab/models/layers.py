"""Building blocks shared by the transformer-era models (ViT/DeiT, Swin, ConvNeXt), named as timm names them.

``Mlp`` (``fc1``, ``fc2``), ``DropPath`` (stochastic depth, Huang et al. 2016, per sample), ``LayerNorm2d`` (LayerNorm
over the channels of an NCHW map), timm's truncated-normal initialization, and ``resample_abs_pos_embed``: bicubic
interpolation of a ViT's absolute position embedding to another patch grid, as timm's function of the same name
(prefix tokens kept, antialiased when shrinking), so a model built for one image size reads another.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DropPath(nn.Module):
    """Drop the whole residual branch per sample with probability ``p`` in training, scaling survivors by 1/(1-p)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path rate must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


def drop_path_or_identity(p: float) -> nn.Module:
    """timm registers ``nn.Identity`` when the rate is 0; parameter names are the same either way."""
    return DropPath(p) if p > 0.0 else nn.Identity()


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Stochastic depth growing linearly from 0 at the first block to ``rate`` at the last (timm's decay rule)."""
    return [rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]


class Mlp(nn.Module):
    """Linear -> GELU -> Linear, the transformer's feed-forward block (timm ``Mlp``: ``fc1``, ``act``, ``fc2``)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of an NCHW tensor (eps 1e-6, as timm's ``LayerNorm2d``)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def init_linear_trunc_normal(model: nn.Module, std: float = 0.02) -> None:
    """timm's transformer initialization: every ``nn.Linear`` weight truncated normal (std 0.02, cut at +-2, i.e.
    absolute, as ``timm.layers.trunc_normal_``), biases zero; LayerNorm keeps ones / zeros."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std, a=-2.0, b=2.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def resample_abs_pos_embed(posemb: Tensor, new_size: tuple[int, int], old_size: Optional[tuple[int, int]] = None,
                           num_prefix_tokens: int = 1) -> Tensor:
    """Position embedding ``[1, prefix + H*W, D]`` resampled to the grid ``new_size`` (bicubic, antialiased).

    The prefix tokens (class, distillation) are kept as they are; ``old_size`` defaults to the square grid the
    patch-token count implies. Same result as ``timm.layers.resample_abs_pos_embed``.
    """
    n_old = posemb.shape[1] - num_prefix_tokens
    if old_size is None:
        side = int(math.sqrt(n_old))
        old_size = (side, side)
    if tuple(old_size) == tuple(new_size):
        return posemb
    if old_size[0] * old_size[1] != n_old:
        raise ValueError(f"position embedding has {n_old} patch tokens, not a {old_size[0]}x{old_size[1]} grid")
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    dim, dtype = grid.shape[-1], grid.dtype
    grid = grid.float().reshape(1, old_size[0], old_size[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new_size), mode="bicubic", antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(dtype)
    return torch.cat([prefix, grid], dim=1)
