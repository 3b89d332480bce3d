"""Each model sees its own input: the teacher's view of the student's batch.

A run's batches are produced once, for the student (the run's data settings: size, channels, normalization). A
teacher trained on other inputs (another normalization, size or number of channels: a kdlab run on ImageNet
statistics, a 224-px teacher for a 32-px student, an RGB teacher for grey images) gets its own view of every batch,
on the device, before its forward pass (a forward pre-hook, so module names and feature hooks are unchanged):
de-normalize with the data's statistics, repeat or average channels, resize, normalize with the teacher's. The
view is a pure function of the teacher and the data settings, which are both in the run's identity, so the shared
teacher outputs and the view bank stay keyed correctly.

Where the data's normalization is not kdlab's to know (a user's ``Dataset`` that normalizes floats itself), the
teacher's inputs cannot be converted: the first batch's statistics are compared with what the teacher saw in its
own training, and a clear difference is one warning line, never a silent drop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from kdlab.config import DataConfig
from kdlab.console import log
from kdlab.data import DatasetInfo, normalization
from kdlab.models import input_spec_of


@dataclass(frozen=True)
class InputView:
    """The input a model expects (or a batch has): square-or-not size, channels, per-channel normalization.

    ``mean``/``std`` are None where unknown (a user's Dataset normalizes its floats itself)."""

    size: tuple[int, int]
    channels: int
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    seen_mean: Optional[float] = None  # the statistics of a training batch as the model saw it (normalized)
    seen_std: Optional[float] = None

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Any) -> Optional["InputView"]:
        """From a run's recorded ``input`` (meta.json, weights metadata); None when absent or malformed."""
        try:
            size = tuple(int(s) for s in data["size"])
            mean = tuple(float(m) for m in data["mean"]) if data.get("mean") is not None else None
            std = tuple(float(s) for s in data["std"]) if data.get("std") is not None else None
            seen = [float(data[k]) if data.get(k) is not None else None for k in ("seen_mean", "seen_std")]
            return cls((size[0], size[1]), int(data["channels"]), mean, std, seen[0], seen[1])
        except (KeyError, TypeError, ValueError, IndexError):
            return None

    def describe(self) -> str:
        norm = "its own normalization" if self.mean is None else f"mean {_short(self.mean)} std {_short(self.std)}"
        return f"{self.channels}x{self.size[0]}x{self.size[1]}, {norm}"


def data_view(images: torch.Tensor, info: DatasetInfo, cfg: DataConfig, own_objects: bool) -> InputView:
    """The view the run's batches have (``images``: one batch as the loader gives it). ``own_objects``: the data
    is the user's Dataset objects, whose float samples carry their own normalization."""
    channels, size = int(images.shape[1]), (int(images.shape[2]), int(images.shape[3]))
    seen = images.float()
    seen_mean, seen_std = round(seen.mean().item(), 4), round(seen.std().item(), 4)
    if own_objects:
        return InputView(size, channels, seen_mean=seen_mean, seen_std=seen_std)
    mean, std = normalization(info, cfg.normalize, channels)
    return InputView(size, channels, tuple(mean), tuple(std), seen_mean, seen_std)


def recorded_view(meta: dict, info: DatasetInfo) -> Optional[InputView]:
    """The input a saved model was trained on: its recorded ``input``, or for checkpoints made before kdlab recorded
    it, what its data settings imply when it was trained on the same dataset as this run's."""
    view = InputView.from_dict(meta.get("input"))
    if view is not None:
        return view
    data = meta.get("dataset") or {}
    if data.get("name") != info.name:
        return None
    channels = int(data.get("channels") or info.in_channels)
    mean, std = normalization(info, str(data.get("normalize") or "dataset"), channels)
    size = int(data["image_size"]) if data.get("image_size") else None
    pad = int(data.get("pad") or 0)
    hw = (size, size) if size else (info.image_size[0] + 2 * pad, info.image_size[1] + 2 * pad)
    return InputView(hw, channels, tuple(mean), tuple(std))


def declared_view(model: nn.Module) -> Optional[InputView]:
    """The input a module declares (:func:`kdlab.models.input_spec_of`) when it names its normalization (ImageNet-
    style models); one that leaves it to the dataset (the CIFAR family, the small variants) takes the data as is."""
    spec = input_spec_of(model)
    if spec is None or spec.mean is None or spec.std is None:
        return None
    return InputView((spec.size, spec.size), spec.channels, tuple(spec.mean), tuple(spec.std))


def convert(images: torch.Tensor, source: InputView, target: InputView) -> torch.Tensor:
    """``images`` in the ``source`` view, as ``target`` expects them (both normalizations known)."""
    x = images.float()
    if source.mean is not None and target.mean is not None:
        x = x * _column(source.std, x) + _column(source.mean, x)  # back to pixels in [0, 1]
    if x.shape[1] != target.channels:
        x = x.mean(dim=1, keepdim=True) if target.channels == 1 else x.expand(-1, target.channels, -1, -1)
    if tuple(x.shape[-2:]) != target.size:
        shrink = x.shape[-2] > target.size[0]
        x = F.interpolate(x, size=target.size, mode="bilinear", align_corners=False, antialias=shrink)
    if source.mean is not None and target.mean is not None:
        x = (x - _column(target.mean, x)) / _column(target.std, x)
    return x.to(images.dtype).contiguous(memory_format=_format(images))


def needs_view(source: InputView, target: InputView) -> bool:
    if source.size != target.size or source.channels != target.channels:
        return True
    if source.mean is None or target.mean is None:
        return False
    return not (_close(source.mean, target.mean) and _close(source.std, target.std))


def give_view(teacher: nn.Module, source: InputView, target: Optional[InputView], images: torch.Tensor,
              who: str) -> Optional[str]:
    """Make ``teacher`` see ``target`` when the data is ``source``: a forward pre-hook converting every input.
    Returns a line saying what it does (None: nothing to do). Unknown normalizations on either side: sizes and
    channels are still converted, and a clear mismatch of the data's statistics is warned about once."""
    if target is None:
        return None
    if source.mean is None:
        _check_statistics(images, target, who)
    if not needs_view(source, target):
        return None
    teacher.register_forward_pre_hook(_ViewHook(source, target))
    return f"{who} sees its own view of each batch: {source.describe()} -> {target.describe()}"


@dataclass(frozen=True)
class _ViewHook:
    source: InputView
    target: InputView

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (convert(args[0], self.source, self.target), *args[1:])


def _check_statistics(images: torch.Tensor, target: InputView, who: str) -> None:
    """Warn when the data's inputs are clearly not what the teacher saw in its training (the statistics of a batch
    it trained on, recorded with it): a shifted mean or a scaled spread drops a teacher's accuracy silently."""
    if target.seen_mean is None or not target.seen_std:
        return
    x = images.float()
    mean, std = x.mean().item(), x.std().item()
    if abs(mean - target.seen_mean) > 0.25 * target.seen_std or not 0.75 < std / target.seen_std < 1.33:
        how = "its own normalization" if target.mean is None else \
            f"mean {_short(target.mean)} std {_short(target.std)}"
        log.warning(f"{who} was trained on inputs normalized with {how} (a batch had mean {target.seen_mean:.2f}, "
                    f"std {target.seen_std:.2f}); this data's first batch has mean {mean:.2f}, std {std:.2f}: "
                    f"normalize your Dataset as the teacher's data was, or the teacher's accuracy drops")


def _column(values: Optional[tuple[float, ...]], like: torch.Tensor) -> torch.Tensor:
    t = torch.tensor(values or (0.0,), dtype=like.dtype, device=like.device)
    return t.view(1, -1, 1, 1)


def _close(a: Optional[tuple[float, ...]], b: Optional[tuple[float, ...]]) -> bool:
    return a is not None and b is not None and len(a) == len(b) and all(abs(x - y) < 1e-4 for x, y in zip(a, b))


def _format(images: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last) \
        else torch.contiguous_format


def _short(values: Optional[tuple[float, ...]]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values or ()) + ")"
