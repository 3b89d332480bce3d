"""Train / validation / test splits: subsets, a stratified held-out split, and a fingerprint of the data."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any, Union

import torch

from kdlab.config import DataConfig
from kdlab.data.checks import check_data_config
from kdlab.data.custom import DatasetSplit, as_split, data_parts, object_info
from kdlab.data.fingerprint import is_hf_dataset
from kdlab.data.hf import wrap_hf
from kdlab.data.info import DatasetInfo, ImageSet, RawDataset
from kdlab.data.registry import load_dataset
from kdlab.errors import ConfigError, DataError

Split = Union[ImageSet, DatasetSplit]


@dataclass(eq=False)
class Splits:
    """The three splits of a dataset. ``val`` (from train) selects models; ``test`` only reports."""

    info: DatasetInfo
    train: Split
    val: Split
    test: Split
    fingerprint: str  # short hash of the dataset name and all three splits' contents (kdlab.data.fingerprint)


def effective_info(info: DatasetInfo, cfg: DataConfig) -> DatasetInfo:
    """The dataset as the models see it: ``dataset.channels`` repeats grey images into that many channels."""
    if not cfg.channels or cfg.channels == info.in_channels:
        return info
    if cfg.channels % info.in_channels:
        raise ConfigError(f"config key 'dataset.channels': {info.name} has {info.in_channels} channel(s); "
                          f"channels must be a multiple of that, got {cfg.channels}")
    return replace(info, in_channels=cfg.channels)


def stratified_split(labels: torch.Tensor, val_ratio: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (train, val) index tensors: each class gives ``round(val_ratio * n_c)`` random members to val.

    A class always keeps at least one training example. Depends only on the labels, ``val_ratio`` and ``seed``.
    """
    n = len(labels)
    if val_ratio <= 0 or n == 0:
        return torch.arange(n), torch.zeros(0, dtype=torch.int64)
    gen = torch.Generator().manual_seed(seed)
    # A random order, then a stable sort by class: within each class the order is random.
    perm = torch.randperm(n, generator=gen)
    by_class = perm[torch.sort(labels[perm], stable=True).indices]
    counts = torch.bincount(labels, minlength=int(labels.max()) + 1)
    starts = torch.cumsum(counts, 0) - counts
    sorted_labels = labels[by_class]
    rank = torch.arange(n) - starts[sorted_labels]  # position of each example within its class
    take = torch.minimum(torch.round(counts.double() * val_ratio).long(), (counts - 1).clamp(min=0))
    is_val = rank < take[sorted_labels]
    return torch.sort(by_class[~is_val]).values, torch.sort(by_class[is_val]).values


def splits_fingerprint(name: str, *sets: Split) -> str:
    """One hash of the dataset name and of every split's own fingerprint, in order (train, val, test)."""
    digest = hashlib.sha256(name.encode())
    for images in sets:
        digest.update(images.fingerprint.encode())
    return digest.hexdigest()[:16]


def load_splits(cfg: DataConfig, data: Any = None) -> Splits:
    """Load ``cfg.name`` (or use ``data``: the user's Dataset objects, see :mod:`kdlab.data.custom`), keep the first
    ``train_subset`` / ``test_subset`` images, hold out a validation split.

    The held-out split depends on the (subset) training labels, ``val_ratio`` and ``split_seed`` only: never on
    the training seed, and the test set is never touched for it.
    """
    check_data_config(cfg)
    raw = load_dataset(cfg) if data is None else data
    if not isinstance(raw, RawDataset):  # Dataset objects, given or returned by a plug-in's dataset function
        return object_splits(raw, cfg)
    train, test = raw.train, raw.test
    if cfg.train_subset is not None:
        train = train.subset(range(min(cfg.train_subset, len(train))))
    if cfg.test_subset is not None:
        test = test.subset(range(min(cfg.test_subset, len(test))))
    if raw.val is not None:
        val = raw.val
    else:
        train_idx, val_idx = stratified_split(train.labels, cfg.val_ratio, cfg.split_seed)
        val = train.subset(val_idx)
        train = train.subset(train_idx) if len(val_idx) else train
    _check_train(train, cfg)
    return Splits(effective_info(raw.info, cfg), train, val, test, splits_fingerprint(raw.info.name, train, val, test))


def object_splits(data: Any, cfg: DataConfig) -> Splits:
    """Splits of the user's Dataset/DataLoader objects (a validation split is held out of train when none is given)."""
    if is_hf_dataset(data) or (isinstance(data, (tuple, list, dict)) and any(map(is_hf_dataset, _members(data)))):
        data = wrap_hf(data, cfg)
    parts = {name: as_split(obj, cfg.image_column, cfg.label_column) for name, obj in data_parts(data).items()}
    _check_train(parts["train"], cfg)
    train = parts["train"]
    if cfg.train_subset is not None:
        train = train.subset(range(min(cfg.train_subset, len(train))))
    if "val" in parts:
        val = parts["val"]
    else:
        train_idx, val_idx = stratified_split(train.labels, cfg.val_ratio, cfg.split_seed)
        train, val = train.subset(train_idx), train.subset(val_idx)
    _check_train(train, cfg)
    test = parts.get("test") or train.subset([])
    if cfg.test_subset is not None:
        test = test.subset(range(min(cfg.test_subset, len(test))))
    info = object_info(cfg.name, {"train": train, "val": val, "test": test}, cfg)
    return Splits(effective_info(info, cfg), train, val, test, splits_fingerprint(cfg.name, train, val, test))


def _members(data: Any) -> list[Any]:
    return list(data.values()) if isinstance(data, dict) else list(data) if isinstance(data, (tuple, list)) else [data]


def _check_train(train: Split, cfg: DataConfig) -> None:
    """Refuse an empty training split before any model is built (one line naming the dataset)."""
    if len(train) == 0:
        raise DataError(f"dataset {cfg.name!r}: the training split is empty (after train_subset and the held-out "
                        f"validation split); give it at least one sample")
