"""Teacher logits computed once per augmented view and reused by every logits-only method of the same seed.

The data stream of a seed is a pure function of (data, split, augmentation settings, seed, epoch) — its
``stream_key`` — so the view of batch ``i`` of epoch ``e`` is the same for every method trained with that seed. The
cache is keyed by the teacher's run key, the stream key, the epoch and the batch index; it stores fp16 logits (one
safetensors file per epoch) and a checksum of each view, and recomputes (and counts) any batch whose view does not
match, so it can never serve logits of another view. The teacher's outputs for fixed views (``dataset.fixed_views``)
are kept once for every seed instead, by :mod:`kdlab.runs.teacher_bank`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from kdlab.files import load_weights, save_weights
from kdlab.batch import Batch
from kdlab.engine.device import autocast


def view_checksum(images: Tensor) -> Tensor:
    """A cheap fingerprint of a batch of views (sum over a strided sample, per image), in float64."""
    return images[:, :, ::3, ::3].double().flatten(1).sum(1)


@dataclass
class CacheStats:
    computed_batches: int = 0  # teacher forward passes run
    reused_batches: int = 0  # teacher forward passes saved
    computed_images: int = 0
    reused_images: int = 0
    mismatches: int = 0  # stored views that did not match (recomputed)
    bank_seconds: float = 0.0  # time spent building banks of fixed views (once per experiment, not per run)

    def add(self, other: "CacheStats") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass
class _Epoch:
    epoch: int
    logits: dict[int, Tensor] = field(default_factory=dict)
    checksums: dict[int, Tensor] = field(default_factory=dict)
    dirty: bool = False


class TeacherLogitCache:
    """Serves ``(epoch, batch_index, images) -> teacher logits`` for one teacher and one data stream."""

    def __init__(self, directory: Path, teacher: nn.Module, device: torch.device, bf16: bool,
                 channels_last: bool) -> None:
        self.directory = Path(directory)
        self.teacher = teacher.to(device).eval()
        if channels_last:
            self.teacher.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.device = device
        self.bf16 = bf16
        self.stats = CacheStats()
        self._current: _Epoch | None = None

    def __call__(self, epoch: int, index: int, batch: Batch) -> Tensor:
        images = batch.images
        current = self._epoch(epoch)
        checksum = view_checksum(images).cpu()
        stored = current.logits.get(index)
        if stored is not None and torch.allclose(current.checksums[index], checksum, rtol=1e-6, atol=1e-3):
            self.stats.reused_batches += 1
            self.stats.reused_images += len(images)
            return stored.to(self.device, non_blocking=True).float()
        if stored is not None:
            self.stats.mismatches += 1
        with torch.no_grad(), autocast(self.device, self.bf16):
            logits = self.teacher(images).float()
        current.logits[index] = logits.to("cpu", torch.float16)
        current.checksums[index] = checksum
        current.dirty = True
        self.stats.computed_batches += 1
        self.stats.computed_images += len(images)
        # serve the stored (fp16-rounded) values, so a reuse is bit-identical to the first use
        return current.logits[index].to(self.device).float()

    def flush(self) -> None:
        """Write the current epoch's logits (called on epoch change and at the end of a run)."""
        current = self._current
        if current is None or not current.dirty or not current.logits:
            return
        state = {f"logits.{i}": t for i, t in current.logits.items()}
        state.update({f"checksum.{i}": t for i, t in current.checksums.items()})
        save_weights(self._path(current.epoch), state)
        current.dirty = False

    def discard(self) -> None:
        self._current = None
        shutil.rmtree(self.directory, ignore_errors=True)

    def _path(self, epoch: int) -> Path:
        return self.directory / f"epoch-{epoch:04d}.safetensors"

    def _epoch(self, epoch: int) -> _Epoch:
        if self._current is not None and self._current.epoch == epoch:
            return self._current
        self.flush()
        loaded = _Epoch(epoch)
        path = self._path(epoch)
        if path.is_file():
            state, _ = load_weights(path)
            for name, tensor in state.items():
                kind, index = name.split(".")
                getattr(loaded, "logits" if kind == "logits" else "checksums")[int(index)] = tensor
        self._current = loaded
        return loaded
