"""What input a model expects: ``InputSpec(size, channels, mean, std)``, declared by the zoo's models.

Every kdlab model sets ``model.input_spec``: the square side it was built for, its input channels and, where the
architecture comes with a fixed normalization (an ImageNet model whose pretrained weights were trained on normalized
images), the per-channel mean and std of pixel values in [0, 1]. Models that train from scratch on whatever dataset
they are given (the CIFAR family, the small transformers) leave ``mean``/``std`` as ``None``: use the dataset's own.
The declaration is architecture-agnostic; a caller that feeds teacher and student each their own view of a batch
reads it with :func:`input_spec_of`, which returns ``None`` for a model that declares nothing (a user's module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)  # timm's IMAGENET_INCEPTION_MEAN: the Google (augreg) ViT weights
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class InputSpec:
    """``size``: side of the square input the model was built for (pixels); ``channels``: input channels;
    ``mean``/``std``: per-channel normalization of [0, 1] pixels the weights expect, or ``None`` (the dataset's)."""

    size: int
    channels: int
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None

    def __post_init__(self) -> None:
        if self.size <= 0 or self.channels <= 0:
            raise ValueError(f"InputSpec needs a positive size and channel count, got {self.size}, {self.channels}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("InputSpec: give both mean and std, or neither")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and len(values) != self.channels:
                raise ValueError(f"InputSpec: {name} has {len(values)} values for {self.channels} channels")


def normalized_spec(size: int, channels: int, mean: tuple[float, ...] = IMAGENET_MEAN,
                    std: tuple[float, ...] = IMAGENET_STD) -> InputSpec:
    """An ``InputSpec`` with RGB statistics fitted to ``channels``: as they are for 3, averaged for 1 (a grey image
    is the mean of its RGB replica), the channel average repeated otherwise (as ``kdlab.data`` normalizes)."""
    if channels != len(mean):
        mean = (sum(mean) / len(mean),) * channels
        std = (sum(std) / len(std),) * channels
    return InputSpec(size, channels, tuple(mean), tuple(std))


def input_spec_of(model: nn.Module) -> InputSpec | None:
    """The model's declared ``input_spec`` (unwrapping ``.module`` of DDP / DataParallel), or ``None``."""
    for candidate in (model, getattr(model, "module", None), getattr(model, "_orig_mod", None)):
        spec = getattr(candidate, "input_spec", None)
        if isinstance(spec, InputSpec):
            return spec
    return None
