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
from dataclasses import dataclass
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


def epoch_generator(seed: int, epoch: int, stream: str = "stream") -> torch.Generator:
    """A CPU generator for (seed, epoch), hashed so nearby pairs give unrelated streams."""
    digest = hashlib.sha256(f"kdlab-{stream}:{seed}:{epoch}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


@dataclass
class Draws:
    """What an epoch draws, per position in its order: the order itself, crop offsets, flip flags, and with
    ``dataset.fixed_views`` the index of the fixed view each position shows. All None for an eval loader."""

    order: Optional[torch.Tensor] = None
    offsets: Optional[torch.Tensor] = None
    flips: Optional[torch.Tensor] = None
    views: Optional[torch.Tensor] = None


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
        self.fixed_views = cfg.fixed_views if train and (self.plan.crop_padding or self.plan.flip) else 0
        self.split_seed = cfg.split_seed
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
            **({"fixed_views": self.fixed_views, "split_seed": self.split_seed} if self.fixed_views else {}),
        }
        self._views_key = _hash({k: v for k, v in fields.items() if k not in ("seed", "batch_size", "train")})
        return _hash(fields)

    @property
    def views_key(self) -> str:
        """Hash of the fixed views (``dataset.fixed_views``): the same for every training seed and batch size."""
        return self._views_key

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

    def epoch_draws(self) -> Draws:
        """The current epoch's draws, on the CPU, from one generator seeded by (seed, epoch), in a fixed order: the
        permutation, then per position the crop offsets and flip flags (or, with fixed views, the view index)."""
        if not self.train:
            return Draws()
        gen = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(len(self.split), generator=gen)
        if not self.fixed_views:
            offsets, flips = self.plan.draw(len(self.split), gen)
            return Draws(order, offsets, flips)
        views = torch.randint(0, self.fixed_views, (len(self.split),), generator=gen)[order]
        offsets, flips = self.view_draws()
        return Draws(order, None if offsets is None else offsets[views, order],
                     None if flips is None else flips[views, order], views)

    def view_draws(self) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Crop offsets ``[K, N, 2]`` and flip flags ``[K, N]`` of the K fixed views of every sample (by index):
        view k is drawn from (split_seed, k) alone, so every training seed shares the same K views."""
        draws = [self.plan.draw(len(self.split), epoch_generator(self.split_seed, k, "views"))
                 for k in range(self.fixed_views)]
        offsets = torch.stack([d[0] for d in draws]) if draws and draws[0][0] is not None else None
        flips = torch.stack([d[1] for d in draws]) if draws and draws[0][1] is not None else None
        return offsets, flips

    def view_batches(self, k: int, batch_size: int) -> Iterator[Batch]:
        """Every sample once, in index order, as its fixed view ``k`` (for computing a teacher's outputs on it)."""
        offsets, flips = self.view_draws()
        draws = Draws(torch.arange(len(self.split)), None if offsets is None else offsets[k],
                      None if flips is None else flips[k], torch.full((len(self.split),), k))
        slices = list(_slices(len(self.split), batch_size, len(range(0, len(self.split), batch_size))))
        return self._iter(draws, slices)

    def __iter__(self) -> Iterator[Batch]:
        return self._iter(self.epoch_draws(), list(self._batch_slices()))

    def _iter(self, draws: Draws, slices: list[slice]) -> Iterator[Batch]:
        batches = self._iter_memory(draws, slices) if self.in_memory else self._iter_disk(draws, slices)
        for sl, batch in zip(slices, batches):
            if draws.views is not None:
                batch.extras["view"] = draws.views[sl].to(self.device)
            yield batch

    def _batch_slices(self) -> Iterator[slice]:
        n, b = len(self.split), self.batch_size
        return (rank_slice(sl.start, sl.stop, self.shard) for sl in _slices(n, b, len(self)))

    def _iter_memory(self, draws: Draws, slices: list[slice]) -> Iterator[Batch]:
        assert self._images is not None
        # One small transfer per epoch; batches then slice device tensors without host round trips.
        order, offsets, flips = (_to(t, self.device) for t in (draws.order, draws.offsets, draws.flips))
        for sl in slices:
            if order is None:
                idx = torch.arange(sl.start, sl.stop, device=self.device)
                images, labels = self._images[sl], self._labels[sl]
            else:
                idx = order[sl]
                images, labels = self._images.index_select(0, idx), self._labels.index_select(0, idx)
            yield Batch(self.plan.apply(images, _part(offsets, sl), _part(flips, sl)), labels, index=idx)

    def _iter_disk(self, draws: Draws, slices: list[slice]) -> Iterator[Batch]:
        assert self.split.paths is not None and self.split.decode_size is not None
        order = draws.order if draws.order is not None else torch.arange(len(self.split))
        offsets, flips = draws.offsets, draws.flips
        loader = path_loader(self.split.paths, self.split.decode_size, self.workers,
                             batch_sampler=[order[sl].tolist() for sl in slices],
                             pin_memory=self.device.type == "cuda")
        for sl, batch in zip(slices, loader):
            images = checked(batch).to(self.device, non_blocking=True)
            idx = order[sl].to(self.device)
            labels = self._labels.index_select(0, idx)
            offs, flips_part = _to(_part(offsets, sl), self.device), _to(_part(flips, sl), self.device)
            yield Batch(self.plan.apply(images, offs, flips_part), labels, index=idx)


def _slices(n: int, b: int, count: int) -> Iterator[slice]:
    for i in range(count):
        yield slice(i * b, min((i + 1) * b, n))


def _hash(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


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
