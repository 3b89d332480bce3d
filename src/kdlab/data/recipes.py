"""Per-image augmentation recipes of image folders, in PIL (no torchvision), drawn per sample.

Two recipes (``dataset.recipe``):

- ``small``: the image is stored at ``S x S`` (shorter side scaled to S, center-cropped); the batch is then padded,
  randomly cropped and flipped on the device (:mod:`kdlab.data.augment`), from draws made per epoch.
- ``imagenet`` (the ImageNet recipe of He et al. 2016 / torchvision's reference scripts): the image is stored as its
  *base*, shorter side scaled to ``B = round(size / 0.875)`` (256 for 224) and center-cropped to ``B x B``; training
  takes a RandomResizedCrop of the base (area 8%-100%, aspect ratio 3/4-4/3, log-uniform; 10 tries, then the
  central crop clamped to the ratio range) resized to ``size x size``, flipped with probability 1/2; evaluation takes
  the central ``size x size`` crop of the base (= resize to size/0.875, center crop).

Every random number of a sample comes from a generator seeded by (seed, epoch, sample index) alone
(:func:`sample_rng`): not from a worker's RNG state, so a DataLoader with N workers yields exactly the batches of
one with none, and an epoch can resume at any batch. With ``dataset.fixed_views: K``, view k of sample i comes
from (split_seed, k, i) instead (:func:`view_rng`), and each epoch picks one of the K per sample. Because every
cache mode (files, memory, disk) starts from the same base image, they all give the same views.

Deviation from torchvision: the random crop is taken from the centered ``B x B`` base, not from the full-resolution
image (so a cached copy is enough; FFCV makes the same trade). Crops see the central square of a wide image only.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from kdlab.config import DataConfig
from kdlab.errors import ConfigError

IMAGENET_SIZE = 224
EVAL_CROP_RATIO = 0.875  # eval: resize to size / 0.875, center crop size
AUTO_IMAGENET_FROM = 128  # recipe=auto picks imagenet from this image_size up
SMALL_DEFAULT_SIZE = 64  # the small recipe's stored size when image_size is unset (Tiny-ImageNet's native size)
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class Recipe:
    """How an image folder's images are stored (``base``, square) and turned into views of ``size``."""

    name: str  # "small" | "imagenet"
    size: int  # side of the images the model sees
    base: int  # side of the stored (decoded, cached) image

    @property
    def per_sample(self) -> bool:
        """Whether views are made per sample in the DataLoader (imagenet) rather than per batch on the device."""
        return self.name == "imagenet"


def resolve_recipe(cfg: DataConfig) -> Recipe:
    """The recipe ``cfg`` asks for: ``recipe=auto`` is imagenet when ``image_size >= 128``, else small."""
    name = cfg.recipe
    if name == "auto":
        name = "imagenet" if (cfg.image_size or 0) >= AUTO_IMAGENET_FROM else "small"
    if name == "small":
        size = cfg.image_size or SMALL_DEFAULT_SIZE
        return Recipe("small", size, size)
    size = cfg.image_size or IMAGENET_SIZE
    if size < 8:
        raise ConfigError(f"config key 'dataset.image_size': the imagenet recipe needs at least 8, got {size}")
    return Recipe("imagenet", size, int(round(size / EVAL_CROP_RATIO)))


def sample_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The generator of one sample's augmentation in one epoch: a function of (seed, epoch, index) only."""
    digest = hashlib.blake2b(f"kdlab-view:{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def view_rng(split_seed: int, view: int, index: int) -> random.Random:
    """The generator of fixed view ``view`` of sample ``index`` (``dataset.fixed_views``): a function of
    (split_seed, view, index) only, so every training seed and epoch sees the same K views of an image, and a teacher's
    outputs for them can be computed once (:mod:`kdlab.runs.teacher_bank`)."""
    digest = hashlib.blake2b(f"kdlab-fixed-view:{split_seed}:{view}:{index}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def resized_crop_box(rng: random.Random, width: int, height: int) -> tuple[int, int, int, int]:
    """RandomResizedCrop's window (left, top, w, h) in a ``width x height`` image (torchvision's algorithm)."""
    area = width * height
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    ratio = width / height  # fallback: the whole image, clamped to the ratio range, centered
    if ratio < RATIO[0]:
        w, h = width, int(round(width / RATIO[0]))
    elif ratio > RATIO[1]:
        w, h = int(round(height * RATIO[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def center_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """The central ``size x size`` window (left, top, w, h), rounded as torchvision's center_crop."""
    return int(round((width - size) / 2.0)), int(round((height - size) / 2.0)), size, size


def make_view(base: np.ndarray, recipe: Recipe, train: bool, rng: random.Random | None) -> np.ndarray:
    """One imagenet-recipe view (uint8 HWC ``size x size``) of a base image (uint8 HWC ``base x base``).

    Training: RandomResizedCrop (bilinear, PIL's antialiased resampling) then a horizontal flip with probability
    1/2, both from ``rng``. Evaluation: the central crop (no resampling: the base is already size/0.875).
    """
    height, width = base.shape[:2]
    if not train:
        left, top, w, h = center_box(width, height, recipe.size)
        return np.ascontiguousarray(base[top:top + h, left:left + w])
    assert rng is not None
    left, top, w, h = resized_crop_box(rng, width, height)
    view = Image.fromarray(base).resize((recipe.size, recipe.size), Image.Resampling.BILINEAR,
                                        box=(left, top, left + w, top + h))
    array = np.asarray(view)
    if rng.random() < 0.5:
        array = array[:, ::-1]
    return np.ascontiguousarray(array)
