"""Train / validation / test splits: subsets, a stratified held-out split, and a fingerprint of the data."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from kdlab.config import DataConfig
from kdlab.data.info import DatasetInfo, ImageSet
from kdlab.data.registry import load_dataset
from kdlab.errors import ConfigError


@dataclass(eq=False)
class Splits:
    """The three splits of a dataset. ``val`` (from train) selects models; ``test`` only reports."""

    info: DatasetInfo
    train: ImageSet
    val: ImageSet
    test: ImageSet
    fingerprint: str  # short hash of the dataset name and all three splits' contents


def check_data_config(cfg: DataConfig) -> None:
    """Reject values no loader can use, naming the key (ConfigError, one line)."""
    if not 0.0 <= cfg.val_ratio < 1.0:
        raise ConfigError(f"config key 'dataset.val_ratio': expected a number in [0, 1), got {cfg.val_ratio}")
    for key in ("batch_size", "eval_batch_size", "train_subset", "test_subset", "image_size"):
        value = getattr(cfg, key)
        if value is not None and value < 1:
            raise ConfigError(f"config key 'dataset.{key}': expected a positive integer, got {value}")
    if cfg.crop_padding < 0 or cfg.workers < 0:
        key = "crop_padding" if cfg.crop_padding < 0 else "workers"
        raise ConfigError(f"config key 'dataset.{key}': expected a non-negative integer, got {getattr(cfg, key)}")


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


def splits_fingerprint(name: str, *sets: ImageSet) -> str:
    digest = hashlib.sha256(name.encode())
    for images in sets:
        digest.update(images.fingerprint.encode())
    return digest.hexdigest()[:16]


def load_splits(cfg: DataConfig) -> Splits:
    """Load ``cfg.name``, keep the first ``train_subset`` / ``test_subset`` images, hold out a validation split.

    The held-out split depends on the (subset) training labels, ``val_ratio`` and ``split_seed`` only: never on
    the training seed, and the test set is never touched for it.
    """
    check_data_config(cfg)
    raw = load_dataset(cfg)
    train, test = raw.train, raw.test
    if cfg.train_subset is not None:
        train = train.subset(range(min(cfg.train_subset, len(train))))
    if cfg.test_subset is not None:
        test = test.subset(range(min(cfg.test_subset, len(test))))
    train_idx, val_idx = stratified_split(train.labels, cfg.val_ratio, cfg.split_seed)
    val = train.subset(val_idx)
    train = train.subset(train_idx) if len(val_idx) else train
    return Splits(raw.info, train, val, test, splits_fingerprint(raw.info.name, train, val, test))
