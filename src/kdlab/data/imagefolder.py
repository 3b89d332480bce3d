"""Image folders: ``root/train/<class>/*.png|jpg|jpeg`` and ``root/val/<class>/...`` (``test/`` also accepted).

The ``val`` folder serves as the *test* split; the validation split used for model selection is carved from
``train`` by :func:`kdlab.data.load_splits`. Class names are the sorted sub-folder names of ``train``.

Stored size: every image is decoded with Pillow to RGB, scaled so its shorter side is ``S`` and center-cropped to
``S x S`` (its *base*, see :mod:`kdlab.data.recipes`): ``S = dataset.image_size`` (default 64) for the small
recipe, ``round(image_size / 0.875)`` (256 for 224) for the imagenet recipe. The loaders decode the files every
epoch, or once into memory or a disk cache (``dataset.cache``, :mod:`kdlab.data.diskcache`).

Bad files (unreadable, truncated, empty, not an image, shorter side under a quarter of ``S``) stop the run with one
line naming the file, before training when the folder is small enough to check every header (listing pass), else
when the loader first decodes it; ``dataset.skip_bad_files=true`` leaves them out and counts them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from kdlab.config import DataConfig
from kdlab.data.info import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo, ImageSet, RawDataset
from kdlab.data.recipes import resolve_recipe
from kdlab.data.registry import DATASETS
from kdlab.errors import DataError

ENV_VAR = "KDLAB_IMAGEFOLDER"
DEFAULT_SIZE = 64
EXTENSIONS = (".png", ".jpg", ".jpeg")
_PARALLEL_DECODE_MIN = 512  # below this many files, worker processes cost more than they save
HEADER_CHECK_LIMIT = 10_000  # split folders with at most this many files get every header checked before training
FINGERPRINT_SAMPLE = 32  # files whose contents the folder fingerprint hashes (a fixed, seeded choice)
MIN_SIDE_FRACTION = 4  # an image whose shorter side is under stored side / 4 is too small (a thumbnail by mistake)
_DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def folder_fingerprint(root: str | Path) -> str:
    """A cheap hash of a folder's image files: sorted relative paths with sizes and mtimes (one ``os.scandir`` pass,
    no file read) plus the contents of a fixed seeded sample of ``FINGERPRINT_SAMPLE`` files.

    Touching, resizing, adding, removing or renaming an image changes it; nothing else does (other files, the
    folder's location). A million files take seconds (the stat calls).
    """
    root = Path(root)
    entries: list[tuple[str, int, int]] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(root / rel if rel else root) as it:
            for entry in it:
                name = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir():
                    stack.append(name)
                elif entry.is_file() and entry.name.lower().endswith(EXTENSIONS):
                    stat = entry.stat()
                    entries.append((name, stat.st_size, stat.st_mtime_ns))
    entries.sort()
    digest = hashlib.sha256(b"kdlab-folder-v1")
    for name, size, mtime in entries:
        digest.update(f"{name}\0{size}\0{mtime}\n".encode())
    rank = sorted(entries, key=lambda e: hashlib.blake2b(f"sample:0:{e[0]}".encode(), digest_size=8).digest())
    for name, _, _ in rank[:FINGERPRINT_SAMPLE]:
        digest.update(hashlib.sha256((root / name).read_bytes()).digest())
    return digest.hexdigest()[:16]


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


def check_files(paths: list[str], labels: torch.Tensor, side: int, skip: bool
                ) -> tuple[list[str], torch.Tensor, tuple[str, ...]]:
    """The listing pass: every header of a small split (``HEADER_CHECK_LIMIT``); the first bad file raises a
    DataError naming it, or with ``skip`` the bad files are left out (returned third)."""
    if len(paths) > HEADER_CHECK_LIMIT:
        return paths, labels, ()
    bad = []
    for i, path in enumerate(paths):
        error = check_header(path, side)
        if error is not None and not skip:
            raise DataError(error)
        if error is not None:
            bad.append(i)
    if not bad:
        return paths, labels, ()
    keep = sorted(set(range(len(paths))) - set(bad))
    return [paths[i] for i in keep], labels[keep], tuple(paths[i] for i in bad)


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
            img = ImageOps.fit(img.convert("RGB"), (width, height), method=Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
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
    recipe = resolve_recipe(cfg)
    train_paths, train_labels, classes = scan_split(root / "train")
    test_paths, test_labels, _ = scan_split(test_dir, classes)
    size = (recipe.base,) * 2
    info = DatasetInfo(name="imagefolder", num_classes=len(classes), in_channels=3, image_size=size,
                       class_names=classes, mean=IMAGENET_MEAN, std=IMAGENET_STD, flip=True)
    return RawDataset(info, train=_image_set(root / "train", train_paths, train_labels, recipe.base, cfg),
                      test=_image_set(test_dir, test_paths, test_labels, recipe.base, cfg))


def _image_set(folder: Path, paths: list[str], labels: torch.Tensor, side: int, cfg: DataConfig) -> ImageSet:
    paths, labels, skipped = check_files(paths, labels, side, cfg.skip_bad_files)
    if not paths:
        raise DataError(f"image folder {folder} has no readable images ({len(skipped)} bad files skipped)")
    return ImageSet(labels, paths=paths, decode_size=(side, side), folder=str(folder),
                    folder_fingerprint=folder_fingerprint(folder), skipped=skipped)
