"""Batch loaders whose every view is a pure function of (data, settings, seed, epoch).

A train loader's epoch draws, from one CPU ``torch.Generator`` seeded by (seed, epoch) and in this order: the
shuffle permutation, then per-sample crop offsets, then per-sample flip flags (small recipe). The imagenet recipe's
crops and flips are drawn per sample from (seed, epoch, sample index) in the DataLoader workers
(:mod:`kdlab.data.recipes`). So any method trained with the same seed sees the same augmented views, the number of
workers changes nothing, an epoch resumes at any batch (``set_epoch(epoch, start_batch)``), and a teacher's outputs
can be cached by ``(stream_key, epoch, batch_index)``.

Where an image folder's images come from (``dataset.cache``): ``memory`` decodes the split once (small recipe: a
uint8 tensor on the device, each batch gathered and augmented there; imagenet recipe: an array in host memory that
the workers crop); ``disk`` reads a decoded copy memory-mapped (:mod:`kdlab.data.diskcache`); ``none`` decodes the
files every epoch. ``auto`` is memory when the decoded split fits :func:`memory_budget`, else none. Every mode gives
the same views.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from typing import Iterator, Optional, Sequence

import torch

from kdlab.batch import Batch
from kdlab.config import DataConfig
from kdlab.data.augment import AugmentPlan, normalization
from kdlab.data.checks import check_data_config
from kdlab.data.custom import DatasetLoader, DatasetSplit
from kdlab.data.diskcache import open_cache
from kdlab.data.info import DatasetInfo, ImageSet
from kdlab.data.recipes import Recipe, resolve_recipe
from kdlab.data.shard import epoch_generator, rank_slice
from kdlab.data.stream import ArraySource, BaseSource, FileSource, ViewBatch, ViewDataset, decode_bases, view_loader
from kdlab.errors import ConfigError, DataError

MEMORY_BUDGET = 2 << 30  # decoded bytes under which cache=auto keeps a split in memory (also at most RAM / 8)


def memory_budget() -> int:
    """Decoded bytes under which ``dataset.cache=auto`` decodes an image folder's split into memory:
    min(2 GiB, physical memory / 8)."""
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        ram = 8 * MEMORY_BUDGET
    return min(MEMORY_BUDGET, ram // 8)


@dataclass
class Draws:
    """What an epoch draws, per position in its order: the order itself, crop offsets, flip flags, and with
    ``dataset.fixed_views`` the index of the fixed view each position shows. All None for an eval loader."""

    order: Optional[torch.Tensor] = None
    offsets: Optional[torch.Tensor] = None
    flips: Optional[torch.Tensor] = None
    views: Optional[torch.Tensor] = None


def cache_mode(split: ImageSet, cfg: DataConfig) -> str:
    """Where a split's images come from: "tensor" (already in memory), "memory", "disk" or "none" (the files)."""
    if split.in_memory:
        return "tensor"
    if cfg.cache != "auto":
        return cfg.cache
    if cfg.in_memory is not None:  # the legacy key
        return "memory" if cfg.in_memory else "none"
    return "memory" if split.decoded_bytes < memory_budget() else "none"


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
        self.start_batch = 0
        self.recipe = _loader_recipe(split, cfg)
        self.skip_bad_files = cfg.skip_bad_files
        self.bad_files: dict[str, str] = {}  # path -> message of the files skipped while decoding (skip_bad_files)
        if self.recipe.per_sample:  # the views come out of the workers at their final size: only normalize here
            plain = replace(cfg, augment=False, image_size=None, pad=0)
            self.plan = AugmentPlan.build(info, plain, (3, self.recipe.size, self.recipe.size), train=train,
                                          device=self.device)
        else:
            self.plan = AugmentPlan.build(info, cfg, split.image_shape, train=train, device=self.device)
        augments = self.recipe.per_sample or self.plan.crop_padding or self.plan.flip
        self.fixed_views = cfg.fixed_views if train and augments else 0
        self.split_seed = cfg.split_seed
        self._stream_key = self._make_stream_key(cfg)
        self.cache = cache_mode(split, cfg)
        self.in_memory = self.cache in ("tensor", "memory")
        self._images: Optional[torch.Tensor] = None
        self._valid: Optional[torch.Tensor] = None  # False for the bad files of a decoded split (skip_bad_files)
        self._source: Optional[BaseSource] = None
        if self.cache == "tensor":
            self._images = split.images.to(self.device)  # type: ignore[union-attr]
        else:
            self._source = self._open_source(cfg)
        self._labels = split.labels.to(self.device)

    def _open_source(self, cfg: DataConfig) -> BaseSource:
        """Decode into memory, open (or build) the disk copy, or list the files, per ``self.cache``."""
        split, side = self.split, self.recipe.base
        assert split.paths is not None
        if self.cache == "disk":
            if split.folder is None:
                raise ConfigError("config key 'dataset.cache': disk applies to image folders loaded by kdlab")
            source = open_cache(split.folder, split.paths, side, cfg.cache_dir, cfg.workers, split.folder_fingerprint)
            bad = {i: source.errors[r] for i, r in enumerate(source.rows or ()) if r in source.errors}
            if bad and not self.skip_bad_files:  # every bad file of the split is known: stop before training
                raise DataError(next(iter(bad.values())))
            self._note_bad(bad)
            return source
        files = FileSource(split.paths, side)
        if self.cache == "none":
            return files
        array, errors = decode_bases(files, side, cfg.workers, self.skip_bad_files)
        self._note_bad(errors)
        assert array is not None
        if self.recipe.per_sample:  # crops are made per sample by the workers, from host memory
            return ArraySource(array, errors=errors)
        # once, as uint8 NCHW on the device: 4x smaller than floats, and each batch is then a device gather
        self._images = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous().to(self.device)
        valid = torch.ones(len(split), dtype=torch.bool)
        valid[list(errors)] = False
        self._valid = valid.to(self.device) if errors else None
        return ArraySource(array[:0], errors=errors)

    def _note_bad(self, errors: dict[int, str]) -> None:
        assert self.split.paths is not None
        self.bad_files.update({self.split.paths[i]: message for i, message in errors.items()})

    @property
    def skipped_files(self) -> int:
        """Bad files left out of this split: at listing (the whole split folder's) and while decoding."""
        return len(set(self.split.skipped) | set(self.bad_files)) if isinstance(self.split, ImageSet) else 0

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
            **({"recipe": self.recipe.name, "size": self.recipe.size, "base": self.recipe.base}
               if self.recipe.per_sample else {}),
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
        if self.recipe.per_sample:
            return self.plan.output_shape((3, self.recipe.size, self.recipe.size))
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

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """The epoch the next iterations show, starting at batch ``start_batch`` (resuming mid-epoch: the batches
        before it are not decoded, and the ones after are exactly those of an uninterrupted epoch)."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} is outside the epoch's {len(self)} batches")
        self.epoch, self.start_batch = epoch, start_batch

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
        # the plan draws offsets (flips) for every view or for none
        view_offsets = [d[0] for d in draws if d[0] is not None]
        view_flips = [d[1] for d in draws if d[1] is not None]
        offsets = torch.stack(view_offsets) if view_offsets else None
        flips = torch.stack(view_flips) if view_flips else None
        return offsets, flips

    def view_batches(self, k: int, batch_size: int, chunks: Optional[Sequence[int]] = None) -> Iterator[Batch]:
        """Every sample once, in index order, as its fixed view ``k`` (for computing a teacher's outputs on it);
        ``chunks``: only these batches (numbers ``j``: samples ``j * batch_size`` on), to resume a bank's build."""
        offsets, flips = self.view_draws()
        draws = Draws(torch.arange(len(self.split)), None if offsets is None else offsets[k],
                      None if flips is None else flips[k], torch.full((len(self.split),), k))
        slices = list(_slices(len(self.split), batch_size, len(range(0, len(self.split), batch_size))))
        return self._iter(draws, slices if chunks is None else [slices[j] for j in chunks])

    def __iter__(self) -> Iterator[Batch]:
        return self._iter(self.epoch_draws(), list(self._batch_slices())[self.start_batch:])

    def _iter(self, draws: Draws, slices: list[slice]) -> Iterator[Batch]:
        batches = self._iter_memory(draws, slices) if self._images is not None else self._iter_stream(draws, slices)
        for sl, batch, kept in batches:
            if batch is None:  # every file of the batch was bad (skip_bad_files)
                continue
            if draws.views is not None:
                views = draws.views[sl] if kept is None else draws.views[sl][kept.cpu()]
                batch.extras["view"] = views.to(self.device)
            yield batch

    def _batch_slices(self) -> Iterator[slice]:
        n, b = len(self.split), self.batch_size
        return (rank_slice(sl.start, sl.stop, self.shard) for sl in _slices(n, b, len(self)))

    def _iter_memory(self, draws: Draws, slices: list[slice]) -> Iterator[tuple[slice, Batch, Kept]]:
        assert self._images is not None
        # One small transfer per epoch; batches then slice device tensors without host round trips.
        order, offsets, flips = (_to(t, self.device) for t in (draws.order, draws.offsets, draws.flips))
        for sl in slices:
            idx = torch.arange(sl.start, sl.stop, device=self.device) if order is None else order[sl]
            offs, flips_part, kept = _part(offsets, sl), _part(flips, sl), None
            if self._valid is not None:
                kept = torch.nonzero(self._valid.index_select(0, idx)).flatten()
                idx, offs, flips_part = idx[kept], _pick(offs, kept), _pick(flips_part, kept)
            images, labels = self._images.index_select(0, idx), self._labels.index_select(0, idx)
            yield sl, Batch(self.plan.apply(images, offs, flips_part), labels, index=idx), kept

    def _iter_stream(self, draws: Draws, slices: list[slice]) -> Iterator[tuple[slice, Optional[Batch], Kept]]:
        """Batches decoded (and, imagenet recipe, cropped) by the DataLoader workers, augmented here per batch."""
        assert self._source is not None
        order = draws.order if draws.order is not None else torch.arange(len(self.split))
        views = None
        if draws.views is not None and self.recipe.per_sample:  # the view each sample shows, by sample index
            views = torch.zeros(len(self.split), dtype=torch.int64)
            views[order] = draws.views
        dataset = ViewDataset(self._source, self.recipe, self.train, self.seed, self.epoch,
                              None if views is None else views.numpy(), self.split_seed)
        loader = view_loader(dataset, [order[sl].tolist() for sl in slices], self.workers,
                             pin_memory=self.device.type == "cuda")
        for sl, views in zip(slices, loader):
            kept = self._check(views)
            if views.images is None:
                yield sl, None, kept
                continue
            idx = order[sl] if kept is None else order[sl][kept]
            offs, flips = _pick(_part(draws.offsets, sl), kept), _pick(_part(draws.flips, sl), kept)
            images = views.images.to(self.device, non_blocking=True)
            idx = idx.to(self.device)
            batch = Batch(self.plan.apply(images, _to(offs, self.device), _to(flips, self.device)),
                          self._labels.index_select(0, idx), index=idx)
            yield sl, batch, kept

    def _check(self, views: ViewBatch) -> Kept:
        """Stop at a batch's first bad file (one line naming it), or note it and keep the good samples' positions."""
        if not views.errors:
            return None
        if not self.skip_bad_files:
            raise DataError(views.errors[0][1])
        self._note_bad(dict(views.errors))
        return views.kept


Kept = Optional[torch.Tensor]  # positions kept within a batch (None: all)


def _pick(t: Optional[torch.Tensor], kept: Kept) -> Optional[torch.Tensor]:
    return t if t is None or kept is None else t[kept.to(t.device)]


def _loader_recipe(split: ImageSet, cfg: DataConfig) -> Recipe:
    """The recipe of a loader over ``split``; the imagenet recipe needs an image folder loaded at its base size."""
    recipe = resolve_recipe(cfg)
    if split.paths is None:
        if cfg.recipe == "imagenet":
            raise ConfigError("config key 'dataset.recipe': imagenet applies to image folders (dataset=imagefolder)")
        c, h, w = split.image_shape
        return Recipe("small", h, h)
    if recipe.per_sample:
        if split.decode_size != (recipe.base, recipe.base):
            raise ConfigError(f"config key 'dataset.image_size': the splits were loaded for another size "
                              f"(stored {split.decode_size}, the imagenet recipe at {recipe.size} needs "
                              f"{recipe.base})")
        return recipe
    side = split.decode_size[0] if split.decode_size else recipe.base
    return Recipe("small", side, side)


def _slices(n: int, b: int, count: int) -> Iterator[slice]:
    for i in range(count):
        yield slice(i * b, min((i + 1) * b, n))


def _hash(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _part(t: Optional[torch.Tensor], sl: slice) -> Optional[torch.Tensor]:
    return t[sl] if t is not None else None


def _to(t: Optional[torch.Tensor], device: torch.device) -> Optional[torch.Tensor]:
    return t.to(device) if t is not None else None


def make_loader(split: ImageSet | DatasetSplit, info: DatasetInfo, cfg: DataConfig, *, train: bool,
                device: torch.device, seed: int = 0) -> BatchLoader | DatasetLoader:
    """A :class:`BatchLoader` over an ImageSet (see the module docstring for its guarantees), or a
    :class:`~kdlab.data.custom.DatasetLoader` over a user Dataset's split."""
    if isinstance(split, DatasetSplit):
        check_data_config(cfg)
        return DatasetLoader(split, info, cfg, train=train, device=device, seed=seed)
    return BatchLoader(split, info, cfg, train=train, device=device, seed=seed)
