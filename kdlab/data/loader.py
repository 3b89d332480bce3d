"""Batch loaders whose every view is a pure function of (data, settings, seed, epoch).

A train loader's epoch draws, from one CPU ``torch.Generator`` seeded by (seed, epoch) and in this order: the
shuffle permutation, then per-sample crop offsets, then per-sample flip flags. So any method trained with the same
seed sees the same augmented views, resuming at an epoch boundary is exact, and a teacher's outputs can be cached by
``(stream_key, epoch, batch_index)``.

In memory (tensor datasets, and image folders whose split decodes to < 1 GiB unless ``in_memory`` says otherwise)
the split is moved to the device once as uint8 and each batch is gathered and augmented there. On disk, a
``torch.utils.data.DataLoader`` decodes the files (in ``workers`` processes) in the same order and the batch goes
through the same augmentation on the device.
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterator, Optional

import torch

from kdlab.batch import Batch
from kdlab.config import DataConfig
from kdlab.data.augment import AugmentPlan, normalization
from kdlab.data.custom import DatasetLoader, DatasetSplit
from kdlab.data.imagefolder import checked, path_loader
from kdlab.data.info import DatasetInfo, ImageSet
from kdlab.data.shard import rank_slice
from kdlab.data.splits import check_data_config

IN_MEMORY_LIMIT = 1 << 30  # decoded bytes under which an on-disk split is decoded into memory


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator for (seed, epoch), hashed so nearby pairs give unrelated streams."""
    digest = hashlib.sha256(f"kdlab-stream:{seed}:{epoch}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _use_memory(split: ImageSet, cfg: DataConfig) -> bool:
    if split.in_memory or cfg.in_memory is True:
        return True
    return cfg.in_memory is None and split.decoded_bytes < IN_MEMORY_LIMIT


class BatchLoader:
    """Iterates :class:`~kdlab.batch.Batch` records on ``device``: float32 normalized images ``[B, C, H', W']``,
    int64 labels ``[B]`` and the samples' indices in the split.

    Train loaders shuffle, augment and drop the last incomplete batch (when there is more than one batch); eval
    loaders keep every sample, in order, unaugmented. Call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, split: ImageSet, info: DatasetInfo, cfg: DataConfig, *, train: bool,
                 device: torch.device, seed: int = 0) -> None:
        check_data_config(cfg)
        self.split, self.info, self.train, self.seed = split, info, train, seed
        self.device = torch.device(device)
        self.batch_size = cfg.batch_size if train else cfg.eval_batch_size
        self.epoch = 0
        self.shard = (0, 1)  # (rank, world size): this process's part of every batch (kdlab.engine.distributed)
        self.workers = cfg.workers
        self.plan = AugmentPlan.build(info, cfg, split.image_shape, train=train, device=self.device)
        self._stream_key = self._make_stream_key(cfg)
        self.in_memory = _use_memory(split, cfg)
        self._images: Optional[torch.Tensor] = None
        if self.in_memory:  # once, as uint8: 4x smaller than floats, and each batch is then a device gather
            self._images = split.decoded(cfg.workers).images.to(self.device)  # type: ignore[union-attr]
        self._labels = split.labels.to(self.device)

    def _make_stream_key(self, cfg: DataConfig) -> str:
        mean, std = normalization(self.info, cfg.normalize, self.input_shape[0])
        fields = {
            "v": 1, "dataset": self.info.name, "data": self.split.fingerprint, "train": self.train,
            "batch_size": self.batch_size, "out_size": self.plan.out_size, "mean": mean, "std": std,
            **({"pad": self.plan.pad} if self.plan.pad else {}),
            **({"channels": self.plan.channels} if self.plan.channels else {}),
            # Eval views are not random: the seed and augmentation settings do not change them.
            "seed": self.seed if self.train else None,
            "crop_padding": self.plan.crop_padding, "flip": self.plan.flip,
        }
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images this loader yields."""
        return self.plan.output_shape(self.split.image_shape)

    @property
    def stream_key(self) -> str | None:
        """Hash of everything that determines the sequence of views (not the epoch)."""
        return self._stream_key

    @property
    def num_samples(self) -> int:
        return len(self.split)

    def __len__(self) -> int:
        n, b = len(self.split), self.batch_size
        if self.train and n > b:
            return n // b
        return -(-n // b)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_draws(self) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(order, crop offsets, flip flags) of the current epoch on the CPU; all None for an eval loader."""
        if not self.train:
            return None, None, None
        gen = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(len(self.split), generator=gen)
        offsets, flips = self.plan.draw(len(self.split), gen)
        return order, offsets, flips

    def __iter__(self) -> Iterator[Batch]:
        order, offsets, flips = self.epoch_draws()
        if self.in_memory:
            return self._iter_memory(order, offsets, flips)
        return self._iter_disk(order, offsets, flips)

    def _batch_slices(self) -> Iterator[slice]:
        n, b = len(self.split), self.batch_size
        for i in range(len(self)):
            yield rank_slice(i * b, min((i + 1) * b, n), self.shard)

    def _iter_memory(self, order: Optional[torch.Tensor], offsets: Optional[torch.Tensor],
                     flips: Optional[torch.Tensor]) -> Iterator[Batch]:
        assert self._images is not None
        # One small transfer per epoch; batches then slice device tensors without host round trips.
        order, offsets, flips = (t.to(self.device) if t is not None else None for t in (order, offsets, flips))
        for sl in self._batch_slices():
            if order is None:
                idx = torch.arange(sl.start, sl.stop, device=self.device)
                images, labels = self._images[sl], self._labels[sl]
            else:
                idx = order[sl]
                images, labels = self._images.index_select(0, idx), self._labels.index_select(0, idx)
            yield Batch(self.plan.apply(images, _part(offsets, sl), _part(flips, sl)), labels, index=idx)

    def _iter_disk(self, order: Optional[torch.Tensor], offsets: Optional[torch.Tensor],
                   flips: Optional[torch.Tensor]) -> Iterator[Batch]:
        assert self.split.paths is not None and self.split.decode_size is not None
        if order is None:
            order = torch.arange(len(self.split))
        slices = list(self._batch_slices())
        loader = path_loader(self.split.paths, self.split.decode_size, self.workers,
                             batch_sampler=[order[sl].tolist() for sl in slices],
                             pin_memory=self.device.type == "cuda")
        for sl, batch in zip(slices, loader):
            images = checked(batch).to(self.device, non_blocking=True)
            idx = order[sl].to(self.device)
            labels = self._labels.index_select(0, idx)
            offs, flips_part = _to(_part(offsets, sl), self.device), _to(_part(flips, sl), self.device)
            yield Batch(self.plan.apply(images, offs, flips_part), labels, index=idx)


def _part(t: Optional[torch.Tensor], sl: slice) -> Optional[torch.Tensor]:
    return t[sl] if t is not None else None


def _to(t: Optional[torch.Tensor], device: torch.device) -> Optional[torch.Tensor]:
    return t.to(device) if t is not None else None


def make_loader(split, info: DatasetInfo, cfg: DataConfig, *, train: bool, device: torch.device,
                seed: int = 0):
    """A :class:`BatchLoader` over an ImageSet (see the module docstring for its guarantees), or a
    :class:`~kdlab.data.custom.DatasetLoader` over a user Dataset's split."""
    if isinstance(split, DatasetSplit):
        check_data_config(cfg)
        return DatasetLoader(split, info, cfg, train=train, device=device, seed=seed)
    return BatchLoader(split, info, cfg, train=train, device=device, seed=seed)
