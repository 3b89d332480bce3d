"""Image folders: ``root/train/<class>/*.png|jpg|jpeg`` and ``root/val/<class>/...`` (``test/`` also accepted).

The ``val`` folder serves as the *test* split; the validation split used for model selection is carved from
``train`` by :func:`kdlab.data.load_splits`. Class names are the sorted sub-folder names of ``train``.

Stored size: every image is decoded with Pillow to RGB, scaled so its shorter side is ``S`` and center-cropped to
``S x S`` (its *base*, see :mod:`kdlab.data.recipes`): ``S = dataset.image_size`` (default 64) for the small
recipe, ``round(image_size / 0.875)`` (256 for 224) for the imagenet recipe. The loaders decode the files every
epoch, or once into memory or a disk cache (``dataset.cache``, :mod:`kdlab.data.diskcache`).

Bad files (unreadable, truncated, empty, not an image, shorter side under a quarter of ``S``) stop the run with one
line naming the file, before training when the folder is small enough to check every header (listing pass), else
when the loader first decodes it; ``dataset.skip_bad_files=true`` leaves them out and counts them. The files are
decoded by :mod:`kdlab.data.decode`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from kdlab.config import DataConfig
from kdlab.data.decode import check_header
from kdlab.data.info import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo, ImageSet, RawDataset
from kdlab.data.recipes import resolve_recipe
from kdlab.data.registry import DATASETS
from kdlab.errors import DataError

ENV_VAR = "KDLAB_IMAGEFOLDER"
DEFAULT_SIZE = 64
EXTENSIONS = (".png", ".jpg", ".jpeg")
HEADER_CHECK_LIMIT = 10_000  # split folders with at most this many files get every header checked before training
FINGERPRINT_SAMPLE = 32  # files whose contents the folder fingerprint hashes (a fixed, seeded choice)


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
