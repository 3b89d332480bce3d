"""The user's own data: ``torch.utils.data.Dataset`` objects (or DataLoaders) as kdlab splits, streamed in batches.

    kdlab.train(model=..., data=my_dataset)                          # train only: val held out of it, no test
    kdlab.train(model=..., data=(train_set, test_set))               # or (train, val, test), or a dict of them
    kdlab.train(model=..., data=(train_loader, test_loader))         # a DataLoader lends its dataset, batch size,
                                                                     # workers and collate function
    kdlab train dataset=my_data:make_dataset                         # a plug-in function returning any of these

A sample is ``(image, label)`` or a dict with ``image``/``img`` and ``label``/``labels`` keys (other keys:
``dataset.image_column`` / ``dataset.label_column``); the image a Tensor ``[C, H, W]`` (float: used as it is, the
Dataset's transform has normalized it; uint8: scaled to [0, 1], then ``dataset.normalize=imagenet`` applies if asked)
or a PIL image, and an int label.
The Dataset augments itself: kdlab adds no crop or flip, only ``dataset.pad``, ``dataset.channels`` and
``dataset.image_size``. Labels come from the Dataset's ``targets``/``labels`` when it has them, else from reading
each sample once; they are class indices (integers, or integral floats such as ``3.0``; ``0.5`` is refused).
A Hugging Face ``datasets.Dataset``/``DatasetDict`` is read through :mod:`kdlab.data.hf`.

kdlab draws each epoch's order, and the DataLoader workers' seeds, from (seed, epoch), so a run resumes exactly when
the Dataset's randomness comes from torch's RNG. A Dataset's views are not a pure function of (seed, epoch), so its
loaders have no ``stream_key``: teacher outputs are not shared across methods for it (the teacher runs live).

Opting in to shared teacher outputs (``dataset.fixed_views: K`` / experiment ``teacher_views: K``): a Dataset that
defines ``kdlab_view(index, generator)`` -- return ``self[index]``, drawing every random number of its augmentation
from the ``torch.Generator`` given -- lets kdlab draw its views: view k of sample i comes from a generator seeded by
(split_seed, k, i), so the teacher's outputs for its K views are computed once and shared by every method and seed
(:mod:`kdlab.runs.teacher_bank`). For a transform that uses torch's global RNG (torchvision's), this is enough::

    def kdlab_view(self, index, generator):
        with torch.random.fork_rng():
            torch.manual_seed(generator.initial_seed())
            return self[index]
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torch.utils.data._utils.collate import default_collate

from kdlab.batch import Batch
from kdlab.config import DataConfig
from kdlab.data.augment import normalization
from kdlab.data.fingerprint import dataset_fingerprint
from kdlab.data.info import DatasetInfo
from kdlab.data.shard import epoch_generator, rank_slice
from kdlab.errors import DataError

IMAGE_KEYS = ("image", "img")  # a dict sample's image and label keys, unless dataset.image_column / label_column
LABEL_KEYS = ("label", "labels")


def sample_image(image: Any) -> torch.Tensor:
    """A sample's image as a ``[C, H, W]`` tensor (PIL images and HxWxC uint8 arrays become uint8 CHW)."""
    if isinstance(image, torch.Tensor):
        return image if image.dim() == 3 else image.unsqueeze(0)
    if hasattr(image, "getbands"):  # a PIL image
        image = np.asarray(image)
    if isinstance(image, np.ndarray):
        array = image if image.ndim == 3 else image[:, :, None]
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    raise DataError(f"a dataset sample's image is a {type(image).__name__}; expected a Tensor, a PIL image or an array")


def _label(value: Any) -> int:
    """A class index; an integral float (``3.0``) is one, a fractional one (``0.5``) is refused."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 or isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    if isinstance(value, (float, np.floating)):
        if not float(value).is_integer():
            raise DataError(f"a dataset label is {value}: labels must be class indices (integers), not soft or "
                            f"fractional values")
        return int(value)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataError(f"a dataset label is a {type(value).__name__} ({str(value)[:40]}): labels must be class "
                        f"indices (integers)") from None


def _pick(keys: tuple[str, ...], item: dict, what: str, config_key: str) -> Any:
    for key in keys:
        if key in item:
            return item[key]
    raise DataError(f"a dataset sample (a dict) has no {what} key {' or '.join(map(repr, keys))}; its keys: "
                    f"{', '.join(map(str, item))} (set dataset.{config_key})")


def split_sample(item: Any, image_key: Optional[str] = None, label_key: Optional[str] = None) -> tuple[Any, Any]:
    """(image, label) of one sample: an ``(image, label, ...)`` tuple, or a dict (keys: ``image_key`` or
    ``image``/``img``; ``label_key`` or ``label``/``labels``)."""
    if isinstance(item, dict):
        image = _pick((image_key,) if image_key else IMAGE_KEYS, item, "image", "image_column")
        return image, _pick((label_key,) if label_key else LABEL_KEYS, item, "label", "label_column")
    return item[0], item[1]


def dataset_labels(dataset: Dataset, image_key: Optional[str] = None, label_key: Optional[str] = None) -> torch.Tensor:
    """All labels of a Dataset: its ``targets``/``labels`` attribute when it has one of the right length, else read."""
    n = len(dataset)  # type: ignore[arg-type]
    for attr in ("targets", "labels"):
        values = getattr(dataset, attr, None)
        if values is not None and not callable(values) and len(values) == n:
            return torch.as_tensor(np.asarray([_label(v) for v in values]), dtype=torch.int64)
    return torch.tensor([_label(split_sample(dataset[i], image_key, label_key)[1]) for i in range(n)],
                        dtype=torch.int64)


@dataclass(eq=False)
class DatasetSplit:
    """Some samples (``indices``) of a user Dataset, with their labels; optional DataLoader settings."""

    dataset: Dataset
    indices: torch.Tensor  # int64 positions in ``dataset``
    labels: torch.Tensor  # int64, one per index
    batch_size: Optional[int] = None  # a DataLoader's batch size (training only)
    workers: Optional[int] = None
    collate_fn: Optional[Callable] = None
    source: str = ""  # the fingerprint of the whole Dataset object (kdlab.data.fingerprint.dataset_fingerprint)
    image_key: Optional[str] = None  # a dict sample's keys (None: image/img, label/labels)
    label_key: Optional[str] = None

    in_memory = False
    paths = None

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, positions: torch.Tensor | Sequence[int] | range) -> "DatasetSplit":
        idx = torch.as_tensor(list(positions) if isinstance(positions, range) else positions, dtype=torch.int64)
        return replace(self, indices=self.indices[idx], labels=self.labels[idx])

    def sample(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = split_sample(self.dataset[int(self.indices[i])], self.image_key, self.label_key)
        return sample_image(image), _label(label)

    @cached_property
    def image_shape(self) -> tuple[int, int, int]:
        if not len(self):
            raise DataError("a dataset split is empty")
        return tuple(self.sample(0)[0].shape)  # type: ignore[return-value]

    @property
    def decoded_bytes(self) -> int:
        return 1 << 62  # never decoded into memory by kdlab

    @cached_property
    def fingerprint(self) -> str:
        """A short hash of the Dataset object's fingerprint (its code, length, labels and sampled items) and of the
        positions and labels this split takes of it."""
        h = hashlib.sha256(f"n={len(self)};source={self.source}".encode())
        h.update(self.indices.numpy().tobytes())
        h.update(self.labels.numpy().tobytes())
        return h.hexdigest()[:16]


def as_split(obj: Any, image_key: Optional[str] = None, label_key: Optional[str] = None) -> DatasetSplit:
    """A Dataset or DataLoader as a whole-dataset split (``image_key``/``label_key``: a dict sample's keys)."""
    loader = obj if isinstance(obj, DataLoader) else None
    dataset = loader.dataset if loader is not None else obj
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise DataError(f"data of type {type(obj).__name__} is not a map-style Dataset (with __len__ and __getitem__)")
    labels = dataset_labels(dataset, image_key, label_key)
    settings: dict[str, Any] = {}
    if loader is not None:
        if isinstance(loader.sampler, RandomSampler):
            warnings.warn("a DataLoader with shuffle=True was given: kdlab draws its own order from (seed, epoch), "
                          "so runs resume exactly; its shuffle is not used", UserWarning, stacklevel=2)
        settings = {"batch_size": loader.batch_size, "workers": loader.num_workers, "collate_fn": loader.collate_fn}
    source = dataset_fingerprint(obj, labels=labels, image_key=image_key, label_key=label_key)
    return DatasetSplit(dataset, torch.arange(len(labels)), labels, source=source, image_key=image_key,
                        label_key=label_key, **settings)


def data_parts(data: Any) -> dict[str, Any]:
    """``{"train": ..., "val": ..., "test": ...}`` from a Dataset/DataLoader, a (train, test) or (train, val, test)
    tuple, or a dict with those keys (val and test optional; ``validation`` is val, as in a Hugging Face
    ``DatasetDict``)."""
    if isinstance(data, dict):
        data = {("val" if k == "validation" else k): v for k, v in data.items()}
        unknown = set(data) - {"train", "val", "test"}
        if "train" not in data or unknown:
            raise DataError(f"data dict needs 'train' and may have 'val' and 'test'; got keys {sorted(data)}")
        return {k: v for k, v in data.items() if v is not None}
    if isinstance(data, (tuple, list)):
        names = {1: ("train",), 2: ("train", "test"), 3: ("train", "val", "test")}.get(len(data))
        if names is None:
            raise DataError(f"data tuple must be (train,), (train, test) or (train, val, test); got {len(data)} items")
        return {k: v for k, v in zip(names, data) if v is not None}
    return {"train": data}


def object_info(name: str, parts: dict[str, DatasetSplit], cfg: DataConfig) -> DatasetInfo:
    """The description of the user's splits: class names from the Dataset's ``classes`` when they cover the labels
    (else ``0..max label``), the first image's shape, no normalization (the Dataset's transform does its own)."""
    train = parts["train"]
    classes = getattr(train.dataset, "classes", None)
    seen = int(max(int(p.labels.max()) for p in parts.values() if len(p)) + 1)
    num_classes = len(classes) if isinstance(classes, (list, tuple)) and len(classes) >= seen else seen
    if classes is not None and num_classes == len(classes):
        names = tuple(str(c) for c in classes)
    else:
        names = tuple(map(str, range(num_classes)))
    c, h, w = train.image_shape
    return DatasetInfo(name=name, num_classes=num_classes, in_channels=c, image_size=(h, w), class_names=names,
                       mean=(0.0,) * c, std=(1.0,) * c, flip=False)


class DatasetLoader:
    """The streaming loader of a :class:`DatasetSplit`: the same interface as :class:`kdlab.data.BatchLoader`."""

    def __init__(self, split: DatasetSplit, info: DatasetInfo, cfg: DataConfig, *, train: bool,
                 device: torch.device, seed: int = 0) -> None:
        self.split, self.info, self.train, self.seed = split, info, train, seed
        self.device = torch.device(device)
        self.batch_size = (split.batch_size or cfg.batch_size) if train else cfg.eval_batch_size
        self.workers = split.workers if split.workers is not None else cfg.workers
        self.epoch = 0
        self.shard = (0, 1)  # (rank, world size): this process's part of every batch (kdlab.engine.distributed)
        self.pad, self.out_size = cfg.pad, (cfg.image_size, cfg.image_size) if cfg.image_size else None
        c = split.image_shape[0] if len(split) else info.in_channels
        self.channels = cfg.channels if cfg.channels and cfg.channels != c else None
        mean, std = normalization(info, cfg.normalize, self.channels or c)
        self._scale = (torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1))
        self.stream_key = None  # views are the Dataset's own: never shared across methods
        self.fixed_views = cfg.fixed_views if train and hasattr(split.dataset, "kdlab_view") else 0
        self.split_seed = cfg.split_seed
        if self.fixed_views:  # the Dataset lets kdlab draw its views (see the module docstring)
            fields = {"v": 1, "data": split.fingerprint, "fixed_views": self.fixed_views, "split_seed": cfg.split_seed,
                      "pad": self.pad, "size": self.out_size, "channels": self.channels, "mean": mean, "std": std}
            self.views_key = _hash(fields)
            self.stream_key = _hash({"views": self.views_key, "seed": seed, "batch_size": self.batch_size})

    @property
    def num_samples(self) -> int:
        return len(self.split)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.split.image_shape
        return (self.channels or c, *(self.out_size or (h + 2 * self.pad, w + 2 * self.pad)))

    def __len__(self) -> int:
        n, b = len(self.split), self.batch_size
        return n // b if self.train and n > b else -(-n // b)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        n, b = len(self.split), self.batch_size
        gen = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(n, generator=gen) if self.train else torch.arange(n)
        views = torch.randint(0, self.fixed_views, (n,), generator=gen) if self.fixed_views else None
        batches = [order[rank_slice(i * b, min((i + 1) * b, n), self.shard)].tolist() for i in range(len(self))]
        return self._batches(batches, gen, views)

    def view_batches(self, k: int, batch_size: int, chunks: Optional[list[int]] = None) -> Iterator[Batch]:
        """Every sample once, in index order, as its fixed view ``k`` (a Dataset with ``kdlab_view`` only);
        ``chunks``: only these batches (numbers ``j``: samples ``j * batch_size`` on)."""
        n = len(self.split)
        numbers = range(-(-n // batch_size)) if chunks is None else chunks
        batches = [list(range(j * batch_size, min((j + 1) * batch_size, n))) for j in numbers]
        return self._batches(batches, epoch_generator(self.split_seed, k, "views"), torch.full((n,), k))

    def _batches(self, batches: list[list[int]], gen: torch.Generator,
                 views: Optional[torch.Tensor]) -> Iterator[Batch]:
        """The batches of these positions; with ``views`` (by position), each sample as its fixed view."""
        loader = DataLoader(_Indexed(self.split, views, self.split_seed), batch_sampler=batches,
                            num_workers=self.workers, collate_fn=_Collate(self.split.collate_fn), generator=gen,
                            pin_memory=self.device.type == "cuda")
        for images, labels, index in loader:
            images = self._prepare(images.to(self.device, non_blocking=True))
            batch = Batch(images, labels.to(self.device), index=index.to(self.device))
            if views is not None:
                batch.extras["view"] = views[index].to(self.device)
            yield batch

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            mean, std = (t.to(images.device) for t in self._scale)
            if self.channels:
                images = images.repeat_interleave(self.channels // images.shape[1], dim=1)
            images = (images.float() / 255.0 - mean) / std
        elif self.channels:
            images = images.float().repeat_interleave(self.channels // images.shape[1], dim=1)
        if self.pad:
            images = F.pad(images, (self.pad,) * 4)
        if self.out_size is not None and tuple(images.shape[-2:]) != self.out_size:
            images = F.interpolate(images.float(), size=self.out_size, mode="bilinear", align_corners=False)
        return images.float()


class _Indexed(Dataset):
    """Position i of a split -> (image tensor, label, i); with ``views`` (the fixed view of each position), the
    Dataset's ``kdlab_view(index, generator)`` with a generator seeded by (split_seed, view, index)."""

    def __init__(self, split: DatasetSplit, views: Optional[torch.Tensor] = None, split_seed: int = 0) -> None:
        self.split, self.views, self.split_seed = split, views, split_seed

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        if self.views is None:
            image, label = self.split.sample(i)
            return image, label, i
        index = int(self.split.indices[i])
        gen = view_generator(self.split_seed, int(self.views[i]), index)
        item = self.split.dataset.kdlab_view(index, gen)  # type: ignore[attr-defined]
        image, label = split_sample(item, self.split.image_key, self.split.label_key)
        return sample_image(image), _label(label), i


def view_generator(split_seed: int, view: int, index: int) -> torch.Generator:
    """The generator handed to a Dataset's ``kdlab_view`` for fixed view ``view`` of its sample ``index``."""
    digest = hashlib.blake2b(f"kdlab-dataset-view:{split_seed}:{view}:{index}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


def _hash(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Collate:
    """The user's collate function (or PyTorch's default) over (image, label); the positions are collated beside."""

    def __init__(self, collate_fn: Optional[Callable]) -> None:
        self.collate_fn = collate_fn or default_collate

    def __call__(self, samples: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, labels = self.collate_fn([(x, y) for x, y, _ in samples])
        return images, torch.as_tensor(labels, dtype=torch.int64), torch.tensor([i for _, _, i in samples])
