"""What every dataset loader returns: a dataset's description (:class:`DatasetInfo`) and images (:class:`ImageSet`)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional, Sequence, Union

import torch

from kdlab.data.decode import decode_all

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# How much of a split the fingerprint reads: enough to notice changed data, little enough to take milliseconds.
_FINGERPRINT_BYTES = 1 << 20
_FINGERPRINT_STATS = 4096

Indices = Union[torch.Tensor, Sequence[int], range]


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and the loaders need to know about a dataset."""

    name: str
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]  # native (stored) H, W
    class_names: tuple[str, ...]
    mean: tuple[float, ...]  # per-channel statistics of pixel values in [0, 1]
    std: tuple[float, ...]
    flip: bool  # whether a horizontal flip is a label-preserving augmentation by default


@dataclass(eq=False)
class ImageSet:
    """Labelled images: either decoded in memory (``images``) or files on disk (``paths``).

    ``images`` is uint8 ``[N, C, H, W]``; ``paths`` images are decoded to ``decode_size`` (H, W) with
    ``decode_channels`` channels by :mod:`kdlab.data.decode`. Treat an ImageSet as immutable: its fingerprint
    and decoded copy are cached.
    """

    labels: torch.Tensor  # int64 [N]
    images: Optional[torch.Tensor] = None
    paths: Optional[list[str]] = None
    decode_size: Optional[tuple[int, int]] = None
    decode_channels: int = 3
    folder: Optional[str] = None  # the split folder ``paths`` were listed from (image folders: the disk cache's unit)
    folder_fingerprint: Optional[str] = None  # :func:`kdlab.data.imagefolder.folder_fingerprint` of ``folder``
    skipped: tuple[str, ...] = ()  # files of ``folder`` left out at listing (dataset.skip_bad_files)
    _decoded: Optional["ImageSet"] = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.images is None) == (self.paths is None):
            raise ValueError("an ImageSet holds exactly one of images or paths")
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise ValueError("ImageSet labels must be an int64 vector")
        count = len(self.images) if self.images is not None else len(self.paths or ())
        if count != len(self.labels):
            raise ValueError(f"ImageSet has {count} images but {len(self.labels)} labels")
        if self.images is not None and (self.images.dtype != torch.uint8 or self.images.dim() != 4):
            raise ValueError("ImageSet images must be a uint8 [N, C, H, W] tensor")
        if self.paths is not None and self.decode_size is None:
            raise ValueError("an on-disk ImageSet needs decode_size")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one decoded image."""
        if self.images is not None:
            return tuple(self.images.shape[1:])  # type: ignore[return-value]
        assert self.decode_size is not None
        return (self.decode_channels, *self.decode_size)

    @property
    def decoded_bytes(self) -> int:
        """Size of the whole set decoded as uint8."""
        c, h, w = self.image_shape
        return len(self) * c * h * w

    def subset(self, indices: Indices) -> "ImageSet":
        """The images at ``indices`` (in that order)."""
        if isinstance(indices, range) and indices.step == 1 and indices.start == 0:
            # A prefix: a view, no copy (train_subset on a large in-memory set).
            n = len(indices)
            if self.images is not None:
                return ImageSet(self.labels[:n], images=self.images[:n])
            return self._with_paths(self.labels[:n], (self.paths or [])[:n])
        idx = indices.long() if isinstance(indices, torch.Tensor) else torch.tensor(list(indices), dtype=torch.int64)
        if self.images is not None:
            return ImageSet(self.labels[idx], images=self.images[idx])
        paths = self.paths or []
        return self._with_paths(self.labels[idx], [paths[i] for i in idx.tolist()])

    def _with_paths(self, labels: torch.Tensor, paths: list[str]) -> "ImageSet":
        return ImageSet(labels, paths=paths, decode_size=self.decode_size, decode_channels=self.decode_channels,
                        folder=self.folder, folder_fingerprint=self.folder_fingerprint, skipped=self.skipped)

    @cached_property
    def fingerprint(self) -> str:
        """A short hash of the labels and a strided sample of the pixels (or file names and sizes)."""
        h = hashlib.sha256()
        h.update(f"n={len(self)};shape={self.image_shape}".encode())
        h.update(self.labels.cpu().numpy().tobytes())
        if self.images is not None:
            flat = self.images.reshape(-1)
            stride = max(1, flat.numel() // _FINGERPRINT_BYTES)
            h.update(flat[::stride].contiguous().cpu().numpy().tobytes())
        else:
            paths = self.paths or []
            # Class folder + file name: moving the dataset root must not change the fingerprint.
            h.update("\n".join("/".join(p.rsplit(os.sep, 2)[-2:]) for p in paths).encode())
            if self.folder_fingerprint is not None:  # names, sizes, mtimes and sampled contents of the folder
                h.update(self.folder_fingerprint.encode())
            else:
                step = max(1, len(paths) // _FINGERPRINT_STATS)
                h.update(repr([os.stat(p).st_size if os.path.exists(p) else -1 for p in paths[::step]]).encode())
        return h.hexdigest()[:16]

    def decoded(self, workers: int = 0) -> "ImageSet":
        """This set with its images in memory (decoded once, then cached)."""
        if self.images is not None:
            return self
        if self._decoded is None:
            assert self.decode_size is not None and self.paths is not None
            images = decode_all(self.paths, self.decode_size, workers=workers)
            self._decoded = ImageSet(self.labels, images=images)
        return self._decoded


@dataclass
class RawDataset:
    """A dataset as its loader returns it: the official train and test splits, and its own validation split where it
    has one (else one is held out of train)."""

    info: DatasetInfo
    train: ImageSet
    test: ImageSet
    val: Optional[ImageSet] = None

