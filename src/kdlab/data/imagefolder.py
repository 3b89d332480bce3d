"""Image folders: ``root/train/<class>/*.png|jpg|jpeg`` and ``root/val/<class>/...`` (``test/`` also accepted).

The ``val`` folder serves as the *test* split; the validation split used for model selection is carved from
``train`` by :func:`kdlab.data.load_splits`. Class names are the sorted sub-folder names of ``train``.

Stored size: every image is decoded with Pillow to RGB, scaled so its shorter side is ``S`` and center-cropped to
``S x S``, where ``S = dataset.image_size`` if set, else 64 (Tiny-ImageNet's native size: small enough that tens of
thousands of images fit in memory). Augmentation (crop, flip) then works at that size on the device.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from kdlab.config import DataConfig
from kdlab.data.info import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo, ImageSet, RawDataset
from kdlab.data.registry import DATASETS
from kdlab.errors import DataError

ENV_VAR = "KDLAB_IMAGEFOLDER"
DEFAULT_SIZE = 64
EXTENSIONS = (".png", ".jpg", ".jpeg")
_PARALLEL_DECODE_MIN = 512  # below this many files, worker processes cost more than they save


def scan_split(folder: Path, classes: tuple[str, ...] | None = None) -> tuple[list[str], torch.Tensor, tuple[str, ...]]:
    """Image paths (sorted, per class), their labels and the class names of one split folder."""
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    found = tuple(sorted(entry.name for entry in os.scandir(folder) if entry.is_dir()))
    if not found:
        raise DataError(f"image folder {folder} has no class sub-folders")
    if classes is not None and found != classes:
        extra = sorted(set(found) ^ set(classes))
        raise DataError(f"{folder} does not have the same classes as train (differs in: {', '.join(extra[:5])})")
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(found):
        files = sorted(e.path for e in os.scandir(folder / name)
                       if e.is_file() and e.name.lower().endswith(EXTENSIONS))
        if not files:
            raise DataError(f"class folder {folder / name} has no .png/.jpg/.jpeg images")
        paths += files
        labels += [label] * len(files)
    return paths, torch.tensor(labels, dtype=torch.int64), found


def decode_image(path: str, size: tuple[int, int]) -> torch.Tensor:
    """One image file as uint8 ``[3, H, W]``: RGB, shorter side scaled to fit, center-cropped to ``size``."""
    height, width = size
    try:
        with Image.open(path) as img:
            img.draft("RGB", (width, height))  # JPEG: decode at a reduced scale still >= size (much faster)
            img = ImageOps.fit(img.convert("RGB"), (width, height), method=Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


class PathDataset(Dataset):
    """Decodes ``paths[i]`` to uint8 ``[3, H, W]`` in a DataLoader's worker processes.

    A file that cannot be decoded comes back as its error message (see :func:`collate_images`) rather than as an
    exception: an exception crossing the process boundary would lose its one-line message and keep the workers
    alive until garbage collection.
    """

    def __init__(self, paths: list[str], size: tuple[int, int]) -> None:
        self.paths = paths
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor | str:
        try:
            return decode_image(self.paths[index], self.size)
        except DataError as exc:
            return str(exc)


def collate_images(items: list[torch.Tensor | str]) -> torch.Tensor | str:
    """Stack decoded images into a batch, or pass on the first decoding error message."""
    errors = [item for item in items if isinstance(item, str)]
    return errors[0] if errors else torch.stack(items)  # type: ignore[arg-type]


def path_loader(paths: list[str], size: tuple[int, int], workers: int, **kwargs) -> DataLoader:
    """A DataLoader over decoded images; iterate it with :func:`checked`."""
    return DataLoader(PathDataset(paths, size), num_workers=workers, collate_fn=collate_images, **kwargs)


def checked(batch: torch.Tensor | str) -> torch.Tensor:
    """A batch from :func:`path_loader`, raising the DataError a worker passed on."""
    if isinstance(batch, str):
        raise DataError(batch)
    return batch


def decode_all(paths: list[str], size: tuple[int, int], workers: int = 0,
               min_parallel: int = _PARALLEL_DECODE_MIN) -> torch.Tensor:
    """All images decoded into one uint8 ``[N, 3, H, W]`` tensor (by worker processes for ``min_parallel``+ files)."""
    out = torch.empty((len(paths), 3, *size), dtype=torch.uint8)
    if workers > 0 and len(paths) >= min_parallel:
        start = 0
        for batch in path_loader(paths, size, workers, batch_size=256, shuffle=False):
            out[start:start + len(batch)] = checked(batch)
            start += len(batch)
    else:
        for i, path in enumerate(paths):
            out[i] = decode_image(path, size)
    return out


@DATASETS.register("imagefolder")
def load_imagefolder(cfg: DataConfig) -> RawDataset:
    """An image-folder dataset, kept on disk (``paths``); loaders decode it into memory when it is small.

    Root: ``cfg.root``, else ``$KDLAB_IMAGEFOLDER``. See the module docstring for the layout and stored size.
    """
    root_text = cfg.root or os.environ.get(ENV_VAR)
    if not root_text:
        raise DataError(f"dataset imagefolder needs a root: set dataset.root or {ENV_VAR} "
                        "to a folder with train/ and val/")
    root = Path(root_text).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder root {root} does not exist")
    test_dir = root / "val" if (root / "val").is_dir() or not (root / "test").is_dir() else root / "test"
    train_paths, train_labels, classes = scan_split(root / "train")
    test_paths, test_labels, _ = scan_split(test_dir, classes)
    size = (cfg.image_size or DEFAULT_SIZE,) * 2
    info = DatasetInfo(name="imagefolder", num_classes=len(classes), in_channels=3, image_size=size,
                       class_names=classes, mean=IMAGENET_MEAN, std=IMAGENET_STD, flip=True)
    return RawDataset(info, train=ImageSet(train_labels, paths=train_paths, decode_size=size),
                      test=ImageSet(test_labels, paths=test_paths, decode_size=size))
