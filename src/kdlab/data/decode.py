"""Decoding image files: one file to a uint8 image (its stored base, or a fixed size), a header check, many files
by DataLoader worker processes.

Below :mod:`kdlab.data.info` (an on-disk :class:`~kdlab.data.info.ImageSet` decodes itself with :func:`decode_all`),
:mod:`kdlab.data.imagefolder` (which lists the files) and :mod:`kdlab.data.stream` (which decodes bases per batch).
Every failure is a one-line :class:`~kdlab.errors.DataError` naming the file.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from kdlab.errors import DataError

PARALLEL_DECODE_MIN = 512  # below this many files, worker processes cost more than they save
MIN_SIDE_FRACTION = 4  # an image whose shorter side is under stored side / 4 is too small (a thumbnail by mistake)
_DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def check_header(path: str, side: int) -> str | None:
    """Why ``path`` cannot be an image stored at ``side`` (one line naming it), or None: reads the header only
    (PIL's ``verify``), so a truncated JPEG body is found when it is decoded."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            img.verify()
    except _DECODE_ERRORS as exc:
        return f"cannot decode image {path}: {first_words(exc)}"
    return _too_small(path, width, height, side)


def _too_small(path: str, width: int, height: int, side: int) -> str | None:
    if min(width, height) * MIN_SIDE_FRACTION < side:
        return (f"image {path} is too small ({width}x{height}) for the stored size {side}x{side} "
                f"(shorter side at least {-(-side // MIN_SIDE_FRACTION)}); set dataset.skip_bad_files=true to skip it")
    return None


def first_words(exc: BaseException) -> str:
    """An exception's message on one line."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def decode_base(path: str, side: int) -> np.ndarray:
    """One image file as its base: uint8 ``[side, side, 3]`` (RGB, shorter side scaled to ``side``, center-cropped).

    Raises a one-line DataError naming the file when it cannot be decoded or is too small (``MIN_SIDE_FRACTION``).
    """
    try:
        with Image.open(path) as img:
            error = _too_small(path, *img.size, side)
            if error is None:
                img.draft("RGB", (side, side))  # JPEG: decode at a reduced scale still >= side (much faster)
                fitted = ImageOps.fit(img.convert("RGB"), (side, side), method=Image.Resampling.BILINEAR)
                return np.asarray(fitted, dtype=np.uint8)
    except _DECODE_ERRORS as exc:
        raise DataError(f"cannot decode image {path}: {first_words(exc)}") from None
    raise DataError(error)


def decode_image(path: str, size: tuple[int, int]) -> torch.Tensor:
    """One image file as uint8 ``[3, H, W]``: RGB, shorter side scaled to fit, center-cropped to ``size``."""
    height, width = size
    try:
        with Image.open(path) as img:
            img.draft("RGB", (width, height))  # JPEG: decode at a reduced scale still >= size (much faster)
            fitted = ImageOps.fit(img.convert("RGB"), (width, height), method=Image.Resampling.BILINEAR)
            array = np.asarray(fitted, dtype=np.uint8)
    except _DECODE_ERRORS as exc:
        raise DataError(f"cannot decode image {path}: {first_words(exc)}") from None
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


def path_loader(paths: list[str], size: tuple[int, int], workers: int, **kwargs: Any) -> DataLoader:
    """A DataLoader over decoded images; iterate it with :func:`checked`."""
    return DataLoader(PathDataset(paths, size), num_workers=workers, collate_fn=collate_images, **kwargs)


def checked(batch: torch.Tensor | str) -> torch.Tensor:
    """A batch from :func:`path_loader`, raising the DataError a worker passed on."""
    if isinstance(batch, str):
        raise DataError(batch)
    return batch


def decode_all(paths: list[str], size: tuple[int, int], workers: int = 0,
               min_parallel: int = PARALLEL_DECODE_MIN) -> torch.Tensor:
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
