"""CIFAR-10 and CIFAR-100, "python version": the ``.tar.gz`` archive as downloaded, or its extracted folder.

The batches are pickles. They are read with :class:`SafeUnpickler`, which can only rebuild numpy arrays and plain
containers: a tampered file cannot run code, it is refused with a DataError. The archive is read in memory, never
extracted to disk.
"""

from __future__ import annotations

import codecs
import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from kdlab.config import DataConfig
from kdlab.data.info import DatasetInfo, ImageSet, RawDataset
from kdlab.data.registry import DATASETS, resolve_root
from kdlab.errors import DataError

try:  # numpy >= 2 moved the array-reconstruction helpers; genuine (Python 2) files name the old module.
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]

_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): scalar,
    ("numpy._core.multiarray", "scalar"): scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3 pickles at protocol 2 spell bytes as _codecs.encode(text, "latin1"): a pure function, harmless.
    ("_codecs", "encode"): codecs.encode,
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that admits only what CIFAR's batches need: numpy arrays, dtypes and scalars."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def safe_unpickle(data: bytes, source: str) -> dict[str, Any]:
    """Unpickle one CIFAR batch; bytes keys (as in the genuine Python 2 files) become str."""
    try:
        obj = SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"{source}: unsafe or corrupt pickle ({exc})") from None
    except (EOFError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise DataError(f"{source}: corrupt pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{source}: expected a pickled dict, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


@dataclass(frozen=True)
class _Layout:
    """Where the pieces of one CIFAR variant live and what they are called."""

    title: str
    archive: str
    folder: str
    train: tuple[str, ...]
    test: str
    meta: str
    label_key: str
    names_key: str
    env_var: str


CIFAR10 = _Layout("CIFAR-10", "cifar-10-python.tar.gz", "cifar-10-batches-py",
                  tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
                  "labels", "label_names", "KDLAB_CIFAR10")
CIFAR100 = _Layout("CIFAR-100", "cifar-100-python.tar.gz", "cifar-100-python", ("train",), "test", "meta",
                   "fine_labels", "fine_label_names", "KDLAB_CIFAR100")


def _read_members(root: Path, layout: _Layout) -> tuple[Callable[[str], bytes], str]:
    """A reader of the named batch files and a description of where they come from."""
    wanted = (*layout.train, layout.test, layout.meta)
    for folder in (root, root / layout.folder):
        if folder.is_dir() and (folder / layout.meta).is_file():
            def read_file(name: str, folder: Path = folder) -> bytes:
                path = folder / name
                if not path.is_file():
                    raise DataError(f"{layout.title}: {path} is missing")
                return path.read_bytes()

            return read_file, str(folder)
    archive = root if root.is_file() else root / layout.archive
    if archive.is_file():
        members = _read_archive(archive, layout, wanted)
        return (lambda name: members[name]), str(archive)
    raise DataError(f"{layout.title} not found: expected {layout.archive} or {layout.folder}/ under {root}; "
                    f"download the python version from https://www.cs.toronto.edu/~kriz/cifar.html and set "
                    f"dataset.root / {layout.env_var}")


def _read_archive(archive: Path, layout: _Layout, wanted: tuple[str, ...]) -> dict[str, bytes]:
    """The wanted members of the tar.gz, read in one sequential pass (no extraction to disk)."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted and base not in found:
                    handle = tar.extractfile(member)
                    if handle is not None:
                        found[base] = handle.read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{archive}: unreadable or truncated archive ({exc})") from None
    missing = [name for name in wanted if name not in found]
    if missing:
        raise DataError(f"{archive}: {layout.title} archive lacks {', '.join(missing)}")
    return found


def _decode_batch(batch: dict[str, Any], label_key: str, source: str,
                  num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Validated (uint8 [N, 3072] pixels, int64 labels) of one unpickled batch."""
    if "data" not in batch or label_key not in batch:
        raise DataError(f"{source}: batch lacks the 'data' or '{label_key}' entry")
    data, labels = batch["data"], np.asarray(batch[label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{source}: 'data' must be a uint8 array of shape [N, 3072]")
    if labels.ndim != 1 or len(labels) != len(data):
        raise DataError(f"{source}: {len(data)} images but {labels.size} labels")
    bad = labels[(labels < 0) | (labels >= num_classes)] if labels.dtype.kind in "iu" else labels
    if bad.size:
        raise DataError(f"{source}: label {bad.flat[0].item()!r} out of range 0..{num_classes - 1}")
    return data, labels.astype(np.int64)


def _load_cifar(cfg: DataConfig, layout: _Layout, name: str, num_classes: int,
                mean: tuple[float, ...], std: tuple[float, ...]) -> RawDataset:
    read, where = _read_members(resolve_root(cfg, layout.env_var, "./data"), layout)
    meta = safe_unpickle(read(layout.meta), f"{where}:{layout.meta}")
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(layout.names_key, ()))
    if len(names) != num_classes:
        raise DataError(f"{where}:{layout.meta}: expected {num_classes} class names, found {len(names)}")

    def split(files: tuple[str, ...]) -> ImageSet:
        parts = [_decode_batch(safe_unpickle(read(f), f"{where}:{f}"), layout.label_key, f"{where}:{f}", num_classes)
                 for f in files]
        data = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
        return ImageSet(torch.from_numpy(np.concatenate([p[1] for p in parts])), images=torch.from_numpy(data))

    info = DatasetInfo(name=name, num_classes=num_classes, in_channels=3, image_size=(32, 32), class_names=names,
                       mean=mean, std=std, flip=True)
    return RawDataset(info, train=split(layout.train), test=split((layout.test,)))


@DATASETS.register("cifar10")
def load_cifar10(cfg: DataConfig) -> RawDataset:
    """CIFAR-10 (50000/10000, 32x32 RGB). Root: ``cfg.root``, else ``$KDLAB_CIFAR10``, else ``./data``."""
    return _load_cifar(cfg, CIFAR10, "cifar10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


@DATASETS.register("cifar100")
def load_cifar100(cfg: DataConfig) -> RawDataset:
    """CIFAR-100 fine labels (50000/10000, 32x32 RGB). Root: ``cfg.root``, else ``$KDLAB_CIFAR100``, else ``./data``."""
    return _load_cifar(cfg, CIFAR100, "cifar100", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
