"""Tiny datasets written in the genuine on-disk formats (IDX gz, CIFAR python pickles / tar.gz, image folders)."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file of unsigned bytes: big-endian magic (0x0800 | ndim), the dims, then the data."""
    magic = magic if magic is not None else 0x0800 | array.ndim
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_gz(path: Path, payload: bytes) -> Path:
    with gzip.open(path, "wb") as f:
        f.write(payload)
    return path


def fashion_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10  # every class present
    rng.shuffle(labels)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), labels.astype(np.uint8)


def make_fashion_mnist(root: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> dict:
    """The four gzipped IDX files under ``root``; returns the arrays written."""
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = fashion_arrays(n, seed + (split == "test"))
        write_gz(root / FASHION_FILES[split][0], idx_bytes(images))
        write_gz(root / FASHION_FILES[split][1], idx_bytes(labels))
        arrays[split] = (images, labels)
    return arrays


def _py2_style_pickle(obj: object) -> bytes:
    """Protocol 2 with numpy's Python 2 module name, as in the genuine CIFAR files."""
    return pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def cifar_batches(variant: str, per_batch: int, seed: int = 0, bytes_keys: bool = True) -> dict[str, bytes]:
    """The pickled files of a CIFAR-10 (``cifar10``) or CIFAR-100 (``cifar100``) python-version dataset."""
    rng = np.random.default_rng(seed)
    k = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
    dump = _py2_style_pickle if bytes_keys else (lambda o: pickle.dumps(o, protocol=4))
    files: dict[str, bytes] = {}
    if variant == "cifar10":
        names = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
        for name in names:
            labels = [int(v) for v in rng.integers(0, 10, per_batch)]
            data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            files[name] = dump({k("batch_label"): k(name), k("labels"): labels, k("data"): data,
                                k("filenames"): [k(f"img_{i}.png") for i in range(per_batch)]})
        files["batches.meta"] = dump({k("num_cases_per_batch"): per_batch, k("num_vis"): 3072,
                                      k("label_names"): [k(f"class{i}") for i in range(10)]})
    else:
        for name, n in (("train", 2 * per_batch), ("test", per_batch)):
            fine = [int(v) for v in rng.integers(0, 100, n)]
            files[name] = dump({k("filenames"): [k(f"img_{i}.png") for i in range(n)], k("batch_label"): k(name),
                                k("fine_labels"): fine, k("coarse_labels"): [v // 5 for v in fine],
                                k("data"): rng.integers(0, 256, (n, 3072), dtype=np.uint8)})
        files["meta"] = dump({k("fine_label_names"): [k(f"fine{i}") for i in range(100)],
                              k("coarse_label_names"): [k(f"coarse{i}") for i in range(20)]})
    return files


CIFAR_NAMES = {"cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz"),
               "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz")}


def make_cifar(root: Path, variant: str, per_batch: int = 8, archive: bool = True, bytes_keys: bool = True,
               overrides: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """Write a CIFAR dataset under ``root`` as the tar.gz archive or the extracted folder; returns the files."""
    files = {**cifar_batches(variant, per_batch, bytes_keys=bytes_keys), **(overrides or {})}
    folder, archive_name = CIFAR_NAMES[variant]
    root.mkdir(parents=True, exist_ok=True)
    if archive:
        with tarfile.open(root / archive_name, "w:gz") as tar:
            for name, payload in files.items():
                info = tarfile.TarInfo(f"{folder}/{name}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    else:
        (root / folder).mkdir(exist_ok=True)
        for name, payload in files.items():
            (root / folder / name).write_bytes(payload)
    return files


def unpickle_cifar(payload: bytes) -> dict:
    """How the test itself reads back what it wrote (trusted: the test made it)."""
    obj = pickle.loads(payload, encoding="bytes")
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in obj.items()}


def make_imagefolder(root: Path, classes: tuple[str, ...] = ("cat", "dog", "fox"), per_class: int = 4,
                     size: tuple[int, int] = (20, 24), test_folder: str = "val") -> Path:
    """``root/train/<class>/`` and ``root/<test_folder>/<class>/`` with PNG, JPG and grayscale images."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), (test_folder, max(1, per_class // 2))):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                pixels[..., c % 3] = 255  # class-dependent colour, so labels are learnable
                if i % 3 == 2:
                    Image.fromarray(pixels[..., 0]).save(folder / f"{i}.png")
                elif i % 3 == 1:
                    Image.fromarray(pixels).save(folder / f"{i}.JPG", quality=95)
                else:
                    Image.fromarray(pixels).save(folder / f"{i}.png")
    return root
