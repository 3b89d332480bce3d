"""Datasets, splits and deterministic on-device batch loaders.

    splits = load_splits(cfg.dataset)                 # train / val (from train) / test, with a fingerprint
    loader = make_loader(splits.train, splits.info, cfg.dataset, train=True, device=device, seed=cfg.seed)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels in loader: ...

Registered datasets: ``fashion_mnist``, ``cifar10``, ``cifar100``, ``imagefolder``, ``hf:PATH`` (see ``DATASETS``); the
user's own ``torch.utils.data.Dataset`` objects (and Hugging Face ``datasets`` objects, :mod:`kdlab.data.hf`) stream
through :mod:`kdlab.data.custom` (``load_splits(cfg, data=...)``). Fingerprints: :mod:`kdlab.data.fingerprint`.
"""

from kdlab.data import cifar, fashion_mnist, hf, imagefolder  # noqa: F401  (registers the datasets)
from kdlab.data.augment import AugmentPlan, crop_flip, normalization
from kdlab.data.checks import check_data_config
from kdlab.data.custom import DatasetLoader, DatasetSplit
from kdlab.data.info import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo, ImageSet, RawDataset
from kdlab.data.loader import BatchLoader, make_loader
from kdlab.data.registry import DATASETS, load_dataset
from kdlab.data.shard import epoch_generator
from kdlab.data.splits import Splits, load_splits, stratified_split

__all__ = [
    "DATASETS", "DatasetInfo", "ImageSet", "RawDataset", "Splits", "BatchLoader", "AugmentPlan",
    "IMAGENET_MEAN", "IMAGENET_STD", "load_dataset", "load_splits", "make_loader", "stratified_split",
    "check_data_config", "crop_flip", "normalization", "epoch_generator", "DatasetLoader", "DatasetSplit",
]
