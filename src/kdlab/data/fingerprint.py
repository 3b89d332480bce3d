"""Data fingerprints: a short hash per kind of data, so a run trained on other data is never loaded as if it were.

One public function per kind:

- :func:`dataset_fingerprint` -- a ``torch.utils.data.Dataset`` or ``DataLoader``: the code of its class and of its
  transforms (:func:`kdlab.codeid.code_identity`: the module file, or in a notebook the class's own source and the
  helpers it calls), its length, a hash of its labels (the ``targets``/``labels`` attribute; else every item's label
  when it has fewer than 20k items; else a seeded sample) and of its items' contents (every item below 4,096
  items, else a seeded sample of 16).
- :func:`hf_fingerprint` -- a Hugging Face ``datasets.Dataset`` / ``DatasetDict``: its own fingerprint (which
  ``datasets`` derives from its files and the operations applied), length, columns and the columns chosen.
- :func:`data_fingerprint` -- any of those, or a ``(train, test)`` / ``(train, val, test)`` tuple or a dict of them:
  every member, with its role.
- Built-in datasets keep :attr:`kdlab.data.info.ImageSet.fingerprint` (labels and a strided sample of pixels, or file
  names and sizes), combined over train/val/test by :func:`kdlab.data.splits.splits_fingerprint`.

What no fingerprint sees: files a ``__getitem__`` reads whose size and time did not change (sampled items aside),
randomness that does not come from the seeded torch / numpy / ``random`` generators, and the unsampled items of a
Dataset of 4,096 items or more. A new ``name=`` or deleting the run directory forces a new run.

Items are read under a fixed seed (torch, numpy and ``random``, restored afterwards), so a Dataset with random
augmentation gives the same fingerprint every time.
"""

from __future__ import annotations

import hashlib
import random
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from kdlab.codeid import code_identity

ITEM_SAMPLES = 16  # items whose content is hashed in a large Dataset
ALL_ITEMS_BELOW = 4096  # below this many items, every item's content is hashed (a changed item is a changed dataset)
LABEL_SAMPLES = 1024  # labels read from a large Dataset without a targets attribute
ALL_LABELS_BELOW = 20_000  # below this many items, every label is read when there is no targets attribute
_SEED = 0
_TRANSFORM_ATTRS = ("transform", "target_transform", "transforms")
_SIMPLE = (int, float, str, bool, type(None))


def is_hf_dataset(obj: Any) -> bool:
    """A Hugging Face ``datasets.Dataset`` or ``DatasetDict`` (recognised without importing ``datasets``)."""
    return type(obj).__module__.split(".")[0] == "datasets" and type(obj).__name__ in ("Dataset", "DatasetDict")


def data_fingerprint(data: Any, image_key: Optional[str] = None, label_key: Optional[str] = None) -> str:
    """A fingerprint of the data given to kdlab: one object, a tuple/list of them, or a dict of them (every member
    fingerprinted, with its position or key)."""
    if isinstance(data, dict) and not is_hf_dataset(data):
        members = sorted(data.items())
    elif isinstance(data, (tuple, list)):
        members = [(str(i), v) for i, v in enumerate(data)]
    else:
        members = [("", data)]
    digest = hashlib.sha256(type(data).__name__.encode())
    for role, member in members:
        digest.update(f"|{role}:".encode())
        if member is None:
            digest.update(b"None")
        elif is_hf_dataset(member):
            digest.update(hf_fingerprint(member, (image_key, label_key)).encode())
        else:
            digest.update(dataset_fingerprint(member, image_key=image_key, label_key=label_key).encode())
    return digest.hexdigest()[:16]


def hf_fingerprint(obj: Any, columns: Sequence[Optional[str]] = ()) -> str:
    """A Hugging Face Dataset's (or each split of a DatasetDict's) own fingerprint, length, features and format
    transform, plus the columns kdlab reads (``columns``)."""
    digest = hashlib.sha256(f"hf|columns={list(columns)}".encode())
    parts = sorted(obj.items()) if type(obj).__name__ == "DatasetDict" else [("", obj)]
    for split, ds in parts:
        # ``datasets`` keeps its fingerprint (a hash of the source files and of every transform applied) as
        # ``_fingerprint``; there is no public accessor for it.
        own = getattr(ds, "_fingerprint", None) or ""
        digest.update(f"{split}:{own}:{len(ds)}:{ds.column_names}:{ds.features!r}".encode())
        transform = (getattr(ds, "format", None) or {}).get("format_kwargs", {}).get("transform")
        if transform is not None:
            digest.update(callable_identity(transform).encode())
    return digest.hexdigest()[:16]


def dataset_fingerprint(obj: Any, *, labels: Optional[torch.Tensor] = None, image_key: Optional[str] = None,
                        label_key: Optional[str] = None) -> str:
    """A fingerprint of a map-style Dataset (or a DataLoader's dataset and batch settings); see the module docstring.

    ``labels``: the Dataset's labels when the caller has read them already (nothing is read twice).
    """
    own = getattr(obj, "kdlab_fingerprint", None)
    if callable(own):  # kdlab's own wrappers (a Hugging Face dataset) know their identity
        return str(own())
    if isinstance(obj, DataLoader):
        inner = dataset_fingerprint(obj.dataset, labels=labels, image_key=image_key, label_key=label_key)
        collate = obj.collate_fn
        default = getattr(collate, "__module__", "").startswith("torch.utils.data")
        settings = f"loader|{inner}|batch={obj.batch_size}|collate={'' if default else callable_identity(collate)}"
        return hashlib.sha256(settings.encode()).hexdigest()[:16]
    n = len(obj)
    digest = hashlib.sha256(f"dataset|n={n}|keys={image_key},{label_key}".encode())
    digest.update(dataset_code(obj).encode())
    digest.update(labels_hash(obj, labels, label_key).encode())
    digest.update(items_hash(obj).encode())
    return digest.hexdigest()[:16]


def dataset_code(dataset: Any, depth: int = 0) -> str:
    """The code identity of a Dataset's class and transforms, and of the Datasets it wraps (``Subset.dataset``,
    ``ConcatDataset.datasets``)."""
    parts = [f"{type(dataset).__module__}.{type(dataset).__qualname__}", code_identity(type(dataset))]
    for attr in _TRANSFORM_ATTRS:
        value = getattr(dataset, attr, None)
        if value is not None and callable(value):
            parts.append(f"{attr}={callable_identity(value)}")
    if depth < 4:
        inner = getattr(dataset, "dataset", None)
        wrapped = [inner] if inner is not None else list(getattr(dataset, "datasets", None) or [])
        parts += [dataset_code(d, depth + 1) for d in wrapped if hasattr(d, "__getitem__")]
        indices = getattr(dataset, "indices", None)
        if indices is not None and inner is not None:  # a Subset: which items it takes
            parts.append(_array_hash(np.asarray(indices)))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def callable_identity(fn: Any, depth: int = 0) -> str:
    """A transform's identity: its code, its settings (the repr, where it holds no memory address, else its simple
    attributes), and those of the transforms it composes (``.transforms``)."""
    parts = [code_identity(fn)]
    text = repr(fn)
    if " at 0x" not in text:
        parts.append(text)
    elif hasattr(fn, "__dict__") and not callable(getattr(fn, "__code__", None)):
        parts.append(repr(sorted((k, v) for k, v in vars(fn).items() if isinstance(v, _SIMPLE))))
    func = getattr(fn, "func", None)  # functools.partial
    if func is not None and callable(func) and depth < 4:
        parts.append(callable_identity(func, depth + 1) + repr(getattr(fn, "args", ())))
    inner = getattr(fn, "transforms", None)
    if isinstance(inner, (list, tuple)) and depth < 4:
        parts += [callable_identity(t, depth + 1) for t in inner]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def labels_hash(dataset: Any, labels: Optional[torch.Tensor] = None, label_key: Optional[str] = None) -> str:
    """A hash of a Dataset's labels, read the cheapest way (see the module docstring)."""
    n = len(dataset)
    if labels is None:
        for attr in ("targets", "labels"):
            values = getattr(dataset, attr, None)
            if values is not None and not callable(values) and len(values) == n:
                labels = torch.as_tensor(np.asarray(values))
                break
    if labels is not None:
        return "all:" + _array_hash(np.asarray(labels))
    picks = range(n) if n < ALL_LABELS_BELOW else sample_indices(n, LABEL_SAMPLES, stream=1)
    with seeded(_SEED):
        values = [repr(_item_label(dataset[i], label_key)) for i in picks]
    return "read:" + hashlib.sha256(",".join(values).encode()).hexdigest()[:16]


def items_hash(dataset: Any, count: int = ITEM_SAMPLES) -> str:
    """A hash of the contents (every tensor, array, image and number) of every item of a small Dataset (fewer than
    :data:`ALL_ITEMS_BELOW`), else of a seeded sample of ``count`` items, read under a fixed seed."""
    digest = hashlib.sha256()
    n = len(dataset)
    with seeded(_SEED):
        for i in range(n) if n < ALL_ITEMS_BELOW else sample_indices(n, count):
            digest.update(f"#{i}".encode())
            for chunk in _content(dataset[i]):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def sample_indices(n: int, count: int, stream: int = 0) -> list[int]:
    """``count`` distinct positions of ``n`` (the first and last always among them), the same for every call."""
    if n <= count:
        return list(range(n))
    rng = np.random.default_rng([_SEED, stream])
    picks = set(rng.choice(n, size=count - 2, replace=False).tolist()) | {0, n - 1}
    return sorted(picks)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch, numpy and ``random`` seeded with ``seed`` inside the block; their previous states restored after."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _item_label(item: Any, label_key: Optional[str]) -> Any:
    if isinstance(item, dict):
        for key in (label_key, "label", "labels"):
            if key is not None and key in item:
                return _plain(item[key])
        return None
    return _plain(item[1]) if isinstance(item, (tuple, list)) and len(item) > 1 else None


def _plain(value: Any) -> Any:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return np.asarray(value).tolist()
    return value


def _content(value: Any) -> Iterator[bytes]:
    """The bytes of an item: tensors, arrays and PIL images by dtype, shape and data; containers member by member."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    elif hasattr(value, "getbands"):  # a PIL image
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        yield f"{value.dtype}{value.shape}".encode()
        yield np.ascontiguousarray(value).tobytes()
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            yield str(key).encode()
            yield from _content(value[key])
    elif isinstance(value, (tuple, list)):
        for member in value:
            yield from _content(member)
    else:
        yield repr(value).encode()


def _array_hash(values: np.ndarray) -> str:
    if values.dtype == object:  # strings or mixed objects: their text, not their addresses
        return hashlib.sha256(repr(values.tolist()).encode()).hexdigest()[:16]
    return hashlib.sha256(f"{values.dtype}{values.shape}".encode() + np.ascontiguousarray(values).tobytes()
                          ).hexdigest()[:16]
