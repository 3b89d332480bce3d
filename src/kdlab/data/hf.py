"""Hugging Face ``datasets`` as a source: a dataset saved on disk (``dataset=hf:PATH``) or objects given to the API.

    kdlab train dataset=hf:data/my_set                    # a save_to_disk folder, or a folder of .arrow/.parquet files
    kdlab train dataset=hf:data/my_set dataset.image_column=pixels dataset.label_column=y
    kdlab.train(model=..., data=load_from_disk("data/my_set"))   # a datasets.Dataset or DatasetDict

Nothing is downloaded: a folder is read with ``load_from_disk``, or its Arrow/Parquet files with ``load_dataset``
offline. Columns: ``dataset.image_column`` (default ``image`` or ``img``) and ``dataset.label_column`` (default
``label`` or ``labels``); class names come from a ``ClassLabel`` column (string labels become sorted classes).
Splits: ``train``, ``validation`` or ``val``, ``test`` (file names such as ``train-00000-of-00001.parquet`` or
``train/`` sub-folders); without a validation split one is held out of train, as for every dataset.

From ``hf:PATH``, a dataset that decodes to less than :func:`kdlab.data.loader.memory_budget` (or with
``dataset.in_memory=true``) is decoded once into memory and augmented on the device like the built-in datasets;
a larger one streams from its Arrow files, each image decoded in ``__getitem__`` (DataLoader workers), through
:mod:`kdlab.data.custom`. Objects given to the API always stream that way (their own ``with_transform`` applies).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from kdlab.config import DataConfig
from kdlab.data.custom import IMAGE_KEYS, LABEL_KEYS, sample_image
from kdlab.data.fingerprint import hf_fingerprint, is_hf_dataset
from kdlab.data.info import DatasetInfo, ImageSet, RawDataset
from kdlab.data.loader import memory_budget
from kdlab.data.registry import DATASETS
from kdlab.errors import ConfigError, DataError

SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "test": "test"}
FILE_KINDS = {".parquet": "parquet", ".arrow": "arrow"}


def resolve_columns(columns: list[str], image_column: Optional[str], label_column: Optional[str]) -> tuple[str, str]:
    """The image and label column names (given, or the defaults), or a one-line ConfigError naming the columns."""
    found = []
    for key, given, defaults in (("image_column", image_column, IMAGE_KEYS), ("label_column", label_column,
                                                                                 LABEL_KEYS)):
        wanted = (given,) if given else defaults
        name = next((c for c in wanted if c in columns), None)
        if name is None:
            raise ConfigError(f"config key 'dataset.{key}': no column {' or '.join(map(repr, wanted))} in the "
                              f"dataset; its columns: {', '.join(columns)}")
        found.append(name)
    return found[0], found[1]


class HFImageDataset(Dataset):
    """A Hugging Face Dataset as ``(uint8 [C, H, W] image, int label)`` samples, each image decoded when read.

    Images of another size or mode than ``size``/``mode`` are fitted to them (center crop, as image folders are).
    """

    def __init__(self, data: Any, image_column: Optional[str] = None, label_column: Optional[str] = None,
                 size: Optional[tuple[int, int]] = None, mode: Optional[str] = None) -> None:
        self.image_column, self.label_column = resolve_columns(list(data.column_names), image_column, label_column)
        self.data = data.select_columns([self.image_column, self.label_column])
        feature = data.features[self.label_column]
        raw = np.asarray(self.data.with_format("numpy")[self.label_column])
        self.classes: Optional[list[str]] = list(getattr(feature, "names", None) or []) or None
        if raw.dtype.kind in "OUS":  # string labels: classes in sorted order
            self.classes = sorted({str(v) for v in raw})
            raw = np.asarray([self.classes.index(str(v)) for v in raw])
        self.targets = raw
        self.size, self.mode = size, mode

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        image = self.data[int(index)][self.image_column]
        if isinstance(image, Image.Image) and (self.mode or self.size):
            if self.mode and image.mode != self.mode:
                image = image.convert(self.mode)
            if self.size and image.size != (self.size[1], self.size[0]):
                image = ImageOps.fit(image, (self.size[1], self.size[0]), method=Image.Resampling.BILINEAR)
        elif isinstance(image, list):
            image = np.asarray(image)
        return sample_image(image), self.targets[int(index)].item()

    def kdlab_fingerprint(self) -> str:
        """The Hugging Face dataset's own fingerprint and the columns read (see :func:`hf_fingerprint`)."""
        return hf_fingerprint(self.data, (self.image_column, self.label_column, repr(self.size), self.mode))


def wrap_hf(data: Any, cfg: DataConfig) -> Any:
    """Hugging Face objects among ``data`` (one, a DatasetDict, or members of a tuple/dict) as HFImageDatasets."""
    if type(data).__name__ == "DatasetDict" and is_hf_dataset(data):
        return {SPLIT_NAMES.get(k, k): wrap_hf(v, cfg) for k, v in data.items()}
    if is_hf_dataset(data):
        first = _first_image(data, cfg)
        return HFImageDataset(data, cfg.image_column, cfg.label_column, *_shape_of(first))
    if isinstance(data, dict):
        return {k: wrap_hf(v, cfg) for k, v in data.items()}
    if isinstance(data, (tuple, list)):
        return type(data)(wrap_hf(v, cfg) for v in data)
    return data


def _first_image(data: Any, cfg: DataConfig) -> Any:
    column, _ = resolve_columns(list(data.column_names), cfg.image_column, cfg.label_column)
    return data[0][column] if len(data) else None


def _shape_of(image: Any) -> tuple[Optional[tuple[int, int]], Optional[str]]:
    if isinstance(image, Image.Image):
        return (image.size[1], image.size[0]), image.mode
    return None, None


def open_hf(path: Path) -> Any:
    """A ``save_to_disk`` folder (``load_from_disk``), or a folder of Arrow/Parquet files (``load_dataset`` offline:
    splits from file or folder names, else all of it is ``train``)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before `datasets` is imported: never reach the network
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigError("dataset hf:... needs the `datasets` package: pip install 'kdlab[hf]'") from None
    if not path.is_dir():
        raise DataError(f"Hugging Face dataset folder {path} does not exist")
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return datasets.load_from_disk(str(path))
    files: dict[str, dict[str, list[str]]] = {}
    for file in sorted(p for p in path.rglob("*") if p.suffix in FILE_KINDS and p.is_file()):
        words = [part.split("-")[0].split(".")[0] for part in file.relative_to(path).parts]
        split = next((SPLIT_NAMES[w] for w in words if w in SPLIT_NAMES), "train")
        files.setdefault(FILE_KINDS[file.suffix], {}).setdefault(split, []).append(str(file))
    if len(files) != 1:
        raise DataError(f"{path} holds no dataset: expected a save_to_disk folder or .arrow or .parquet files "
                        f"(not both)" if files else f"{path} holds no dataset: expected a save_to_disk folder "
                        f"(dataset_dict.json / state.json) or .arrow / .parquet files")
    kind, data_files = next(iter(files.items()))
    return datasets.load_dataset(kind, data_files=data_files)


def _decode_all(ds: HFImageDataset) -> ImageSet:
    images = [ds[i][0] for i in range(len(ds))]
    stacked = torch.stack(images) if images else torch.zeros((0, 1, 1, 1), dtype=torch.uint8)
    if stacked.dtype != torch.uint8:
        raise DataError("a Hugging Face dataset's images must be uint8 images (PIL or integer arrays) for hf:PATH")
    return ImageSet(torch.as_tensor(ds.targets, dtype=torch.int64), images=stacked)


@DATASETS.register("hf")
def load_hf(cfg: DataConfig) -> Any:
    """``dataset=hf:PATH`` (or ``dataset=hf`` with ``dataset.root=PATH``): see the module docstring."""
    text = cfg.name.partition(":")[2] or cfg.root
    if not text:
        raise ConfigError("config key 'dataset.name': hf needs a folder: dataset=hf:PATH (a save_to_disk folder)")
    loaded = open_hf(Path(text).expanduser())
    parts = wrap_hf(loaded if type(loaded).__name__ == "DatasetDict" else {"train": loaded}, cfg)
    if "train" not in parts:
        raise DataError(f"Hugging Face dataset {text} has no train split; its splits: {', '.join(parts)}")
    train = parts["train"]
    first = train[0][0] if len(train) else torch.zeros((1, 1, 1), dtype=torch.uint8)
    total = sum(len(p) for p in parts.values()) * first.numel()
    if cfg.in_memory is False or (cfg.in_memory is None and total >= memory_budget()):
        return {k: v for k, v in parts.items() if k in ("train", "val", "test")}  # streamed (kdlab.data.custom)
    sets = {k: _decode_all(v) for k, v in parts.items() if k in ("train", "val", "test")}
    test = sets.get("test") or sets["train"].subset([])
    images = sets["train"].images.float() / 255.0  # type: ignore[union-attr]
    mean = tuple(images.mean(dim=(0, 2, 3)).tolist()) if len(images) else (0.0,) * first.shape[0]
    std = tuple(max(s, 1e-3) for s in images.std(dim=(0, 2, 3)).tolist()) if len(images) > 1 else (1.0,) * len(mean)
    n_classes = int(max(int(s.labels.max()) for s in sets.values() if len(s)) + 1) if len(train) else 1
    classes = tuple(train.classes) if train.classes and len(train.classes) >= n_classes else tuple(
        map(str, range(n_classes)))
    info = DatasetInfo(name=cfg.name, num_classes=len(classes), in_channels=first.shape[0],
                       image_size=tuple(first.shape[1:]), class_names=classes, mean=mean, std=std,  # type: ignore
                       flip=False)
    return RawDataset(info, train=sets["train"], test=test, val=sets.get("val"))
