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


def normalization(info: DatasetInfo, normalize: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) for ``normalize`` = "dataset" or "imagenet" (averaged to one channel for grayscale)."""
    if normalize == "dataset":
        return info.mean, info.std
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if info.in_channels == 1:
        return (sum(mean) / 3,), (sum(std) / 3,)
    return mean, std


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
    out_size: Optional[tuple[int, int]]  # None: keep the stored size
    scale: torch.Tensor  # [1, C, 1, 1]: 1 / (255 * std)
    shift: torch.Tensor  # [1, C, 1, 1]: -mean / std

    @classmethod
    def build(cls, info: DatasetInfo, cfg: DataConfig, stored_size: tuple[int, int], *, train: bool,
              device: torch.device) -> "AugmentPlan":
        augment = train and cfg.augment
        flip = augment and (info.flip if cfg.flip is None else cfg.flip)
        out = (cfg.image_size, cfg.image_size) if cfg.image_size else None
        mean, std = normalization(info, cfg.normalize)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        return cls(crop_padding=cfg.crop_padding if augment and cfg.crop_padding > 0 else None, flip=flip,
                   out_size=out if out != tuple(stored_size) else None,
                   scale=(1.0 / (255.0 * std_t)).to(device), shift=(-mean_t / std_t).to(device))

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
        """uint8 ``[B, C, H, W]`` -> float32 ``[B, C, H', W']``: crop/flip, normalize, resize."""
        if offsets is not None or flips is not None:
            images = crop_flip(images, offsets, flips, self.crop_padding or 0)
        x = images.float().mul_(self.scale).add_(self.shift)
        # Normalizing before resizing is exact (bilinear weights sum to 1) and touches fewer pixels when upsampling.
        if self.out_size is not None:
            shrink = self.out_size[0] < x.shape[-2] or self.out_size[1] < x.shape[-1]
            x = F.interpolate(x, size=self.out_size, mode="bilinear", align_corners=False, antialias=shrink)
        return x
