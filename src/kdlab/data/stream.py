"""Streaming an image folder through a ``torch.utils.data.DataLoader``: where base images come from (files, an array
in memory, the disk cache) and how a worker turns sample ``i`` into its view.

A worker never raises for a bad file: it passes the file's one-line message back with the batch (an exception
crossing the process boundary would lose it), and the loader stops with it or, with ``dataset.skip_bad_files``,
drops the sample and counts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from kdlab.data.decode import decode_base
from kdlab.data.recipes import Recipe, make_view, sample_rng, view_rng
from kdlab.errors import DataError


class BaseSource(Protocol):
    """Base images (uint8 ``[S, S, 3]``) by position in a split; a bad one raises a one-line DataError."""

    def __len__(self) -> int: ...

    def base(self, index: int) -> np.ndarray: ...


class FileSource:
    """Decodes ``paths[i]`` from its file (every epoch)."""

    def __init__(self, paths: Sequence[str], side: int) -> None:
        self.paths, self.side = paths, side

    def __len__(self) -> int:
        return len(self.paths)

    def base(self, index: int) -> np.ndarray:
        return decode_base(self.paths[index], self.side)


class ArraySource:
    """Bases decoded once into an array ``[N, S, S, 3]`` (``rows[i]`` is position i's row; ``errors`` the bad rows')."""

    def __init__(self, array: np.ndarray, rows: Optional[Sequence[int]] = None,
                 errors: Optional[dict[int, str]] = None) -> None:
        self.array, self.rows, self.errors = array, rows, errors or {}

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.array)

    def base(self, index: int) -> np.ndarray:
        row = self.rows[index] if self.rows is not None else index
        if row in self.errors:
            raise DataError(self.errors[row])
        return self.array[row]


class ViewDataset(Dataset):
    """Position ``i`` of a split -> ``(i, uint8 HWC view | error message)``.

    Per-sample recipes (imagenet) make the view here from ``sample_rng(seed, epoch, i)``, or with fixed views
    (``views[i]``: the view of sample i shown this epoch) from ``view_rng(split_seed, views[i], i)``; the small recipe
    returns the base, augmented later per batch on the device.
    """

    def __init__(self, source: BaseSource, recipe: Recipe, train: bool, seed: int = 0, epoch: int = 0,
                 views: Optional[np.ndarray] = None, split_seed: int = 0) -> None:
        self.source, self.recipe, self.train, self.seed, self.epoch = source, recipe, train, seed, epoch
        self.views, self.split_seed = views, split_seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | str]:
        try:
            base = self.source.base(index)
        except DataError as exc:
            return index, str(exc)
        if not self.recipe.per_sample:
            return index, base
        rng = None
        if self.train:
            rng = (sample_rng(self.seed, self.epoch, index) if self.views is None
                   else view_rng(self.split_seed, int(self.views[index]), index))
        return index, make_view(np.asarray(base), self.recipe, self.train, rng)


@dataclass
class ViewBatch:
    """What a worker sends back: the good samples' images ``[k, 3, H, W]`` uint8, their positions within the batch,
    and the (position in split, message) of the bad ones."""

    images: Optional[torch.Tensor]
    kept: torch.Tensor  # int64 positions (0..B-1) of the good samples in the requested batch
    errors: list[tuple[int, str]]


def collate_views(items: list[tuple[int, np.ndarray | str]]) -> ViewBatch:
    """Stack a batch's views (one copy, already CHW), setting the bad samples aside."""
    kept = [k for k, (_, item) in enumerate(items) if not isinstance(item, str)]
    errors = [(i, item) for i, item in items if isinstance(item, str)]
    images = None
    if kept:
        stacked = np.stack([items[k][1] for k in kept])  # [k, H, W, 3]
        images = torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()
    return ViewBatch(images, torch.tensor(kept, dtype=torch.int64), errors)


def view_loader(dataset: ViewDataset, batches: list[list[int]], workers: int, pin_memory: bool = False) -> DataLoader:
    """Batches of views in exactly the order of ``batches`` (lists of positions), decoded by ``workers``
    processes. Which worker decodes a sample does not change its view (see :class:`ViewDataset`)."""
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate_views,
                      pin_memory=pin_memory, persistent_workers=False)


def decode_bases(source: BaseSource, side: int, workers: int, skip: bool,
                 on_row: Optional[Callable[[int, np.ndarray | None, str | None], None]] = None,
                 batch_size: int = 64) -> tuple[np.ndarray | None, dict[int, str]]:
    """Every base of ``source`` in order: into one array ``[N, S, S, 3]`` (or, with ``on_row``, handed to it row by
    row instead). Bad rows are zeros, their messages returned; without ``skip`` the first one raises."""
    n = len(source)
    out = np.zeros((n, side, side, 3), dtype=np.uint8) if on_row is None else None
    dataset = ViewDataset(source, Recipe("small", side, side), train=False)  # bases as they are
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    errors: dict[int, str] = {}
    for rows, batch in zip(batches, view_loader(dataset, batches, workers if n >= 256 else 0)):
        for index, message in batch.errors:
            if not skip:
                raise DataError(message)
            errors[index] = message
        good = {rows[k]: j for j, k in enumerate(batch.kept.tolist())}
        for row in rows:
            image = batch.images[good[row]].permute(1, 2, 0).numpy() if row in good else None  # type: ignore[index]
            if on_row is not None:
                on_row(row, image, errors.get(row))
            elif image is not None:
                out[row] = image  # type: ignore[index]
    return out, errors
