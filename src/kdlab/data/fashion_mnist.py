"""Fashion-MNIST from its four IDX files (gzipped, as distributed, or already gunzipped)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from kdlab.config import DataConfig
from kdlab.data.info import DatasetInfo, ImageSet, RawDataset
from kdlab.data.registry import DATASETS, resolve_root
from kdlab.errors import DataError

ENV_VAR = "KDLAB_FASHION_MNIST"
DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")

INFO = DatasetInfo(name="fashion_mnist", num_classes=10, in_channels=1, image_size=(28, 28),
                   class_names=CLASS_NAMES, mean=(0.2860,), std=(0.3530,), flip=True)


def _find(root: Path, name: str) -> Path:
    """``name`` under ``root``, or its gunzipped twin; a DataError saying how to get the data otherwise."""
    for candidate in (root / name, root / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    where = f"directory {root} does not exist" if not root.is_dir() else f"{name} is missing from {root}"
    raise DataError(f"Fashion-MNIST not found: {where}; install it with `apt-get install dataset-fashion-mnist` "
                    f"or set dataset.root / {ENV_VAR} to a folder holding the four IDX .gz files")


def _read(path: Path) -> tuple[bytes, bool]:
    """The file's (decompressed) bytes, and whether the gzip stream was complete."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if path.suffix != ".gz":
        return raw, True
    parts: list[bytes] = []
    try:
        while raw:  # a gzip file may hold several members
            inflater = zlib.decompressobj(wbits=31)
            parts.append(inflater.decompress(raw))
            if not inflater.eof:
                return b"".join(parts), False
            raw = inflater.unused_data
    except zlib.error as exc:
        raise DataError(f"{path} is not a valid gzip file ({exc})") from None
    return b"".join(parts), True


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes: validate magic and size, return the array shaped by its header."""
    data, complete = _read(path)
    ndim = 3 if magic == IMAGES_MAGIC else 1
    header = 4 * (1 + ndim)
    if len(data) < header:
        raise DataError(f"{path} is truncated: expected a {header}-byte IDX header, found {len(data)} bytes")
    found_magic, *dims = struct.unpack(f">{1 + ndim}I", data[:header])
    if found_magic != magic:
        raise DataError(f"{path}: bad IDX magic number {found_magic} (expected {magic}); is this the right file?")
    expected = header + int(np.prod(dims))
    if len(data) < expected or not complete:
        raise DataError(f"{path} is truncated: expected {expected} bytes for dims {tuple(dims)}, found {len(data)}"
                        + ("" if complete else " (the gzip stream ends early)"))
    if len(data) > expected:
        raise DataError(f"{path}: {len(data) - expected} unexpected trailing bytes after dims {tuple(dims)}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _load_split(root: Path, split: str) -> ImageSet:
    image_file, label_file = (_find(root, name) for name in FILES[split])
    images = read_idx(image_file, IMAGES_MAGIC)
    labels = read_idx(label_file, LABELS_MAGIC)
    if images.shape[1:] != INFO.image_size:
        raise DataError(f"{image_file}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    if len(images) != len(labels):
        raise DataError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels")
    if len(labels) and int(labels.max()) >= INFO.num_classes:
        raise DataError(f"{label_file}: label {int(labels.max())} out of range 0..{INFO.num_classes - 1}")
    # frombuffer gives a read-only view of bytes; copy once into a tensor that owns its memory.
    image_tensor = torch.from_numpy(images.copy()).unsqueeze(1)
    return ImageSet(torch.from_numpy(labels.astype(np.int64)), images=image_tensor)


@DATASETS.register("fashion_mnist")
def load_fashion_mnist(cfg: DataConfig) -> RawDataset:
    """Fashion-MNIST (60000 train / 10000 test, 28x28 grayscale, 10 classes).

    Root: ``cfg.root``, else ``$KDLAB_FASHION_MNIST``, else ``/usr/share/datasets/fashion-mnist``.
    """
    root = resolve_root(cfg, ENV_VAR, DEFAULT_ROOT)
    return RawDataset(INFO, train=_load_split(root, "train"), test=_load_split(root, "test"))
