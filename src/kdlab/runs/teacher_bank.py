"""The teacher's outputs for the K fixed views of every training image, paid once and kept on disk (FKD's idea).

With ``dataset.fixed_views: K`` (experiment ``teacher_views: K``) view k of image i is a function of (split_seed, k,
i) alone (:meth:`kdlab.data.BatchLoader.view_draws`, :func:`kdlab.data.recipes.view_rng`, a user Dataset's
``kdlab_view``), whatever the data: a tensor set, an image folder decoded in memory or streamed from its files with
the small or the ImageNet recipe. So the teacher's outputs for all K views are computed once per (teacher, data,
views) and read by every logits-only method of every seed, in this process, in local worker processes and in Ray
tasks (a directory on shared storage, memory-mapped by each reader).

Layout of a bank directory (``EXP/teacher_views/<teacher run key>-<views key>/``):

- ``key.json``: what the bank was computed from (teacher identity, data fingerprint, views key: recipe, image size,
  normalization, K, split_seed; the number of images and classes; ``topk``). A bank whose key differs from the one
  asked for is rebuilt, never read.
- few classes (``<= FULL_UP_TO``): ``logits.npy``, fp16 ``[K, N, C]``;
  many classes: ``values.npy`` fp16 ``[K, N, k]`` (the k largest logits), ``indices.npy`` int16/int32 ``[K, N, k]``
  and ``lse.npy`` fp32 ``[K, N]`` (the log-sum-exp of all C logits), as FKD and TinyViT keep top-k (k = 10).

Top-k reconstruction (TinyViT, Wu et al. 2022, sec. 3.2): with ``p_j = exp(z_j - lse)`` for the kept classes, the
other ``C - k`` classes share the rest of the mass equally, ``q = (1 - sum_kept p_j) / (C - k)``; the bank returns
logits ``z_j`` for the kept classes and ``lse + log q`` for the others, so ``softmax`` of them is exactly that
distribution (it sums to 1, the kept probabilities are the teacher's). At a temperature T != 1 a method's
``softmax(z / T)`` sees the kept logits exactly and the rest flattened: an approximation, as in TinyViT / FKD.

Building writes ``<dir>.partial/`` chunk by chunk (one chunk = one batch of one view), records the finished chunks in
``done.json`` after flushing them, so a killed build resumes where it stopped, then renames the directory into place
(atomic). A lock file serializes builders: a second process waits, then reads the finished bank.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from kdlab import console, files
from kdlab.batch import Batch
from kdlab.engine.device import autocast
from kdlab.runs.teacher_cache import CacheStats

FORMAT = 1
FULL_UP_TO = 100  # up to this many classes the bank keeps every logit; above, the top-k
DEFAULT_TOPK = 10  # FKD and TinyViT keep the 10 largest


def bank_key(loader: Any, teacher_id: str, num_classes: int, topk: int | None = None) -> dict:
    """The key of the bank of ``loader``'s fixed views for the teacher ``teacher_id`` (``topk`` None: the default
    for ``num_classes``; 0: every logit)."""
    if topk is None:
        topk = DEFAULT_TOPK if num_classes > FULL_UP_TO else 0
    return {"format": FORMAT, "teacher": teacher_id, "data": loader.split.fingerprint, "views": loader.views_key,
            "K": loader.fixed_views, "images": loader.num_samples, "input": list(loader.input_shape),
            "classes": num_classes, "topk": topk if 0 < topk < num_classes else 0}


def topk_logits(values: Tensor, indices: Tensor, lse: Tensor, num_classes: int) -> Tensor:
    """Logits ``[B, C]`` whose softmax keeps the teacher's probabilities of the kept classes and spreads the rest of
    the mass equally over the others (see the module docstring). ``values``/``indices`` ``[B, k]``, ``lse`` ``[B]``."""
    values, lse = values.float(), lse.float().unsqueeze(1)
    kept = torch.exp(values - lse).sum(1, keepdim=True)
    rest = (1.0 - kept).clamp_min(1e-12) / (num_classes - values.shape[1])  # fp16 rounding may overshoot 1
    out = (lse + torch.log(rest)).expand(-1, num_classes).clone()
    return out.scatter_(1, indices.long(), values)


class TeacherViewBank:
    """Serves ``(epoch, batch_index, batch) -> teacher logits`` from the bank of the loader's fixed views (rows
    ``[batch.extras["view"], batch.index]``), building it first if it is missing, unfinished or of another key."""

    def __init__(self, path: Path, teacher: nn.Module, loader: Any, device: torch.device, bf16: bool,
                 channels_last: bool, batch_size: int = 512, teacher_id: str = "", topk: int | None = None,
                 num_classes: int | None = None, log: Callable[[str], None] = console.log.info,
                 progress_every: float = 10.0) -> None:
        self.path, self.device, self.log = Path(path), device, log
        self.stats = CacheStats()
        self.key = bank_key(loader, teacher_id, num_classes or loader.info.num_classes, topk)
        with _locked(self.path.with_name(self.path.name + ".lock")):
            if self.path.is_dir() and _read_key(self.path) != self.key:
                log(f"teacher view bank {self.path.name}: made for another teacher, data or views; rebuilding it")
                shutil.rmtree(self.path)
            if not self.path.is_dir():
                start = time.perf_counter()
                builder = _Builder(self, teacher, loader, bf16, channels_last, batch_size, progress_every)
                builder.build()
                self.stats.bank_seconds = time.perf_counter() - start
        self.arrays = {name: np.load(self.path / f"{name}.npy", mmap_mode="r") for name in self.names}

    @property
    def names(self) -> tuple[str, ...]:
        return ("values", "indices", "lse") if self.key["topk"] else ("logits",)

    def rows(self, views: Tensor, index: Tensor) -> Tensor:
        """The teacher's logits ``[B, C]`` (float32, on the CPU) for view ``views[b]`` of image ``index[b]``."""
        v, i = views.cpu().numpy(), index.cpu().numpy()
        got = {name: torch.from_numpy(np.asarray(array[v, i])) for name, array in self.arrays.items()}
        if not self.key["topk"]:
            return got["logits"].float()
        return topk_logits(got["values"], got["indices"], got["lse"], self.key["classes"])

    def __call__(self, epoch: int, index: int, batch: Batch) -> Tensor:
        self.stats.reused_batches += 1
        self.stats.reused_images += len(batch)
        assert batch.index is not None  # a loader of fixed views always says which samples a batch holds
        return self.rows(batch.extras["view"], batch.index).to(self.device, non_blocking=True)

    def flush(self) -> None:
        """Nothing to write: the bank is complete once built."""

    def discard(self) -> None:
        """The bank outlives a seed: every seed reuses it."""


class _Builder:
    """Computes a bank into ``<path>.partial`` chunk by chunk (resuming the chunks a killed build finished)."""

    def __init__(self, bank: TeacherViewBank, teacher: nn.Module, loader: Any, bf16: bool, channels_last: bool,
                 batch_size: int, progress_every: float) -> None:
        self.bank, self.loader, self.bf16, self.channels_last = bank, loader, bf16, channels_last
        self.teacher = teacher.to(bank.device).eval()
        if channels_last:
            self.teacher.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.batch_size, self.progress_every = batch_size, progress_every
        self.partial = bank.path.with_name(bank.path.name + ".partial")
        self.key = bank.key

    def build(self) -> None:
        if self.partial.is_dir() and _read_key(self.partial) != self.key:
            shutil.rmtree(self.partial)  # a killed build of another key
        self.partial.mkdir(parents=True, exist_ok=True)
        arrays = self._open_arrays()
        done = _read_done(self.partial)
        per_view = math.ceil(self.key["images"] / self.batch_size)
        total = self.key["K"] * per_view
        if done:
            self.bank.log(f"teacher view bank {self.bank.path.name}: resuming, {len(done)}/{total} chunks done")
        progress = _Progress(self.bank.log, self.bank.path.name, total, len(done), self.progress_every,
                             self.batch_size)
        for k in range(self.key["K"]):
            todo = [j for j in range(per_view) if k * per_view + j not in done]
            if not todo:
                continue
            for batch in self.loader.view_batches(k, self.batch_size, todo):
                j = int(batch.index.min()) // self.batch_size  # type: ignore[union-attr]  # (a batch whose files were all bad never comes)
                self._write(arrays, k, batch)
                done.add(k * per_view + j)
                files.write_json(self.partial / "done.json", sorted(done))
                progress.step(len(batch))
        for array in arrays.values():
            array.flush()
        del arrays
        (self.partial / "done.json").unlink()
        os.replace(self.partial, self.bank.path)  # the finished bank appears at once, or not at all

    def _open_arrays(self) -> dict[str, np.memmap]:
        key, shape = self.key, (self.key["K"], self.key["images"])
        k = key["topk"]
        specs = {"values": (np.float16, (*shape, k)),
                 "indices": (np.int16 if key["classes"] <= np.iinfo(np.int16).max else np.int32, (*shape, k)),
                 "lse": (np.float32, shape)} if k else {"logits": (np.float16, (*shape, key["classes"]))}
        if not (self.partial / "key.json").is_file():
            for name, (dtype, size) in specs.items():
                np.lib.format.open_memmap(self.partial / f"{name}.npy", mode="w+", dtype=dtype, shape=size).flush()
            files.write_json(self.partial / "key.json", self.key)
        return {name: np.load(self.partial / f"{name}.npy", mmap_mode="r+") for name in specs}

    def _write(self, arrays: dict[str, np.memmap], k: int, batch: Batch) -> None:
        images = batch.images.contiguous(memory_format=torch.channels_last) if self.channels_last else batch.images
        with torch.no_grad(), autocast(self.bank.device, self.bf16):
            logits = self.teacher(images).float()
        if logits.shape[1] != self.key["classes"]:
            raise ValueError(f"the teacher gives {logits.shape[1]} logits, the bank expects {self.key['classes']}")
        assert batch.index is not None
        rows = batch.index.cpu().numpy()
        if self.key["topk"]:
            values, indices = logits.topk(self.key["topk"], dim=1)
            arrays["values"][k, rows] = values.cpu().half().numpy()
            arrays["indices"][k, rows] = indices.cpu().numpy().astype(arrays["indices"].dtype)
            arrays["lse"][k, rows] = torch.logsumexp(logits, 1).cpu().numpy()
        else:
            arrays["logits"][k, rows] = logits.cpu().half().numpy()
        for array in arrays.values():
            array.flush()  # on disk before the chunk is recorded as done
        self.bank.stats.computed_batches += 1
        self.bank.stats.computed_images += len(rows)


class _Progress:
    """A log line every ``every`` % of a bank's chunks, with images per second and the time left."""

    def __init__(self, log: Callable[[str], None], name: str, total: int, done: int, every: float,
                 batch_size: int) -> None:
        self.log, self.name, self.total, self.done, self.every = log, name, total, done, every
        self.start, self.images, self.batch_size = time.perf_counter(), 0, batch_size
        self.next = (math.floor(100 * done / total / every) + 1) * every if total else 100.0

    def step(self, images: int) -> None:
        self.done += 1
        self.images += images
        percent = 100 * self.done / self.total
        if percent + 1e-9 < self.next and self.done < self.total:
            return
        while self.next <= percent + 1e-9:
            self.next += self.every
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.images / elapsed
        left = (self.total - self.done) * self.batch_size / rate if rate else 0.0
        self.log(f"teacher view bank {self.name}: {percent:.0f}% ({self.done}/{self.total} chunks), "
                 f"{rate:.0f} img/s, ETA {left / 60:.1f} min")


def _read_key(directory: Path) -> dict | None:
    try:
        return json.loads((directory / "key.json").read_text())
    except (OSError, ValueError):
        return None


def _read_done(directory: Path) -> set[int]:
    try:
        return set(json.loads((directory / "done.json").read_text()))
    except (OSError, ValueError):
        return set()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """A blocking exclusive lock (released by the OS if the process dies): one builder per bank at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
