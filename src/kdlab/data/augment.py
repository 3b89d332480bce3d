"""Batched, on-device augmentation: random crop with zero padding, horizontal flip, resize, normalize.

All randomness arrives as tensors drawn by the caller (crop offsets, flip flags) from a CPU generator, so the same
views come out on every device. Nothing here loops over samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from kdlab.config import DataConfig
from kdlab.data.info import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo


def normalization(info: DatasetInfo, normalize: str,
                  channels: int | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) for ``normalize`` = "dataset" or "imagenet", for ``channels`` input channels (default
    the dataset's): a grey dataset's statistics are repeated for repeated channels, ImageNet's averaged for one."""
    n = channels or info.in_channels
    if normalize == "dataset":
        mean, std = info.mean, info.std
        return (mean * n, std * n) if len(mean) == 1 and n > 1 else (mean, std)
    if n == 1:
        return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
    return IMAGENET_MEAN, IMAGENET_STD


def crop_flip(images: torch.Tensor, offsets: Optional[torch.Tensor], flips: Optional[torch.Tensor],
              padding: int) -> torch.Tensor:
    """Random crop of a zero-padded batch and optional horizontal flip, as one gather.

    ``images`` ``[B, C, H, W]`` (any dtype); ``offsets`` int64 ``[B, 2]`` in ``[0, 2 * padding]`` (top, left of the
    crop window in padded coordinates); ``flips`` bool ``[B]``. Output pixel (i, j) of sample b reads padded pixel
    (top_b + i, left_b + j), or (top_b + i, left_b + W - 1 - j) when flipped; the padding is zeros.
    """
    b, c, h, w = images.shape
    dev = images.device
    if offsets is None:
        offsets = torch.full((b, 2), padding, dtype=torch.int64, device=dev)
    padded_w = w + 2 * padding
    padded = F.pad(images, (padding,) * 4) if padding else images  # one small copy (uint8)
    rows = offsets[:, :1] + torch.arange(h, device=dev)  # [B, H] rows in padded coordinates
    cols = torch.arange(w, device=dev).expand(b, w)
    if flips is not None:
        cols = torch.where(flips[:, None], (w - 1) - cols, cols)
    cols = offsets[:, 1:] + cols  # [B, W]
    flat_index = (rows[:, :, None] * padded_w + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return torch.gather(padded.reshape(b, c, -1), 2, flat_index).view(b, c, h, w)


@dataclass(frozen=True, eq=False)
class AugmentPlan:
    """What happens to a uint8 batch on its way to the model (fixed per loader)."""

    crop_padding: Optional[int]  # None: no random crop
    flip: bool
    pad: int  # fixed zero padding on every side, before the crop (e.g. 28 -> 32)
    channels: Optional[int]  # repeat the stored channels to this many (grey -> RGB); None keeps them
    out_size: Optional[tuple[int, int]]  # None: keep the stored size
    scale: torch.Tensor  # [1, C, 1, 1]: 1 / (255 * std)
    shift: torch.Tensor  # [1, C, 1, 1]: -mean / std

    @classmethod
    def build(cls, info: DatasetInfo, cfg: DataConfig, stored_shape: tuple[int, int, int], *, train: bool,
              device: torch.device) -> "AugmentPlan":
        """The plan for images stored as ``stored_shape`` (C, H, W) under ``cfg``; ``info`` gives the statistics."""
        augment = train and cfg.augment
        flip = augment and (info.flip if cfg.flip is None else cfg.flip)
        padded = (stored_shape[1] + 2 * cfg.pad, stored_shape[2] + 2 * cfg.pad)
        out = (cfg.image_size, cfg.image_size) if cfg.image_size else None
        channels = cfg.channels if cfg.channels and cfg.channels != stored_shape[0] else None
        mean, std = normalization(info, cfg.normalize, channels or stored_shape[0])
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        return cls(crop_padding=cfg.crop_padding if augment and cfg.crop_padding > 0 else None, flip=flip,
                   pad=cfg.pad, channels=channels, out_size=out if out and out != padded else None,
                   scale=(1.0 / (255.0 * std_t)).to(device), shift=(-mean_t / std_t).to(device))

    def output_shape(self, stored_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """(C, H, W) of the images this plan makes from images stored as ``stored_shape``."""
        c, h, w = stored_shape
        size = self.out_size or (h + 2 * self.pad, w + 2 * self.pad)
        return (self.channels or c, *size)

    def draw(self, n: int, generator: torch.Generator) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Crop offsets ``[n, 2]`` and flip flags ``[n]`` for ``n`` samples, on the CPU, in a fixed order."""
        offsets = flips = None
        if self.crop_padding is not None:
            offsets = torch.randint(0, 2 * self.crop_padding + 1, (n, 2), generator=generator)
        if self.flip:
            flips = torch.rand(n, generator=generator) < 0.5
        return offsets, flips

    def apply(self, images: torch.Tensor, offsets: Optional[torch.Tensor] = None,
              flips: Optional[torch.Tensor] = None) -> torch.Tensor:
        """uint8 ``[B, C, H, W]`` -> float32 ``[B, C', H', W']``: pad, crop/flip, repeat channels, normalize, resize."""
        if self.pad:
            images = F.pad(images, (self.pad,) * 4)
        if offsets is not None or flips is not None:
            images = crop_flip(images, offsets, flips, self.crop_padding or 0)
        if self.channels:
            images = images.repeat_interleave(self.channels // images.shape[1], dim=1)
        x = images.float().mul_(self.scale).add_(self.shift)
        # Normalizing before resizing is exact (bilinear weights sum to 1) and touches fewer pixels when upsampling.
        if self.out_size is not None:
            shrink = self.out_size[0] < x.shape[-2] or self.out_size[1] < x.shape[-1]
            x = F.interpolate(x, size=self.out_size, mode="bilinear", align_corners=False, antialias=shrink)
        return x
