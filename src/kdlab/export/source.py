"""What is exported: a student checkpoint, its run, its data and the deployable function ``pixels -> logits``.

Every exported file computes the same function: the student applied to *normalized* images, with the normalization
inside the graph. The input is float32 pixels in ``[0, 1]`` (``uint8 / 255``), ``[N, C, H, W]`` with the channel
count and the size the model was trained on (after the run's resize, when ``dataset.image_size`` asked for one); the
output is the logits ``[N, num_classes]`` (no softmax). A deployer then only scales and resizes images.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Optional

import torch
from safetensors import SafetensorError
from torch import Tensor, nn

from kdlab.config import DataConfig, from_dict
from kdlab.data import load_splits, make_loader, normalization
from kdlab.errors import CheckpointError, KdlabError
from kdlab.models.saved import load_model
from kdlab.rundir import RunDir

if TYPE_CHECKING:
    from kdlab.data import Splits


class Deployable(nn.Module):
    """``model((pixels - mean) / std)`` as one module: the function every export format holds."""

    scale: Tensor  # buffers
    shift: Tensor

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        # The loader's own arithmetic (kdlab.data.augment.AugmentPlan): x * (1 / std) + (-mean / std).
        self.register_buffer("scale", 1.0 / std_t)
        self.register_buffer("shift", -mean_t / std_t)

    def forward(self, pixels: Tensor) -> Tensor:
        return self.model(pixels * self.scale + self.shift)


@dataclass
class Source:
    """A loaded student checkpoint and everything needed to export and check it."""

    weights: Path  # the .safetensors file
    run: Optional[RunDir]  # the run directory holding it (None for a loose file)
    model: nn.Module  # on the CPU, in eval mode
    meta: dict  # the checkpoint's kdlab metadata
    data: DataConfig  # the settings the run evaluated with

    @cached_property
    def splits(self) -> Splits:

        return load_splits(self.data)

    @cached_property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:

        return normalization(self.splits.info, self.data.normalize)

    @cached_property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one model input: the stored size (plus ``dataset.pad``), or the run's resize target."""
        return tuple(self._loader(self.splits.test, pixels=False).input_shape)  # type: ignore[return-value]

    @property
    def resize(self) -> Optional[tuple[int, int]]:
        """The size images are resized to before the model (None: used at their native size, plus any pad)."""
        return (self.data.image_size, self.data.image_size) if self.data.image_size else None

    def deployable(self) -> Deployable:
        mean, std = self.normalization
        return Deployable(self.model, mean, std).eval()

    def _loader(self, split, pixels: bool, device: str | torch.device = "cpu"):
        from kdlab.data import BatchLoader  # (start-up: kdlab.data only when images are needed)

        loader = make_loader(split, self.splits.info, self.data, train=False, device=torch.device(device))
        if pixels:  # the same views, left as pixels in [0, 1]: scale 1/255, no shift
            if not isinstance(loader, BatchLoader):
                raise KdlabError(f"dataset {self.data.name!r}: its images are the user's Dataset objects, normalized "
                                 f"by their own transform; exporting needs a dataset kdlab loads (pixels in [0, 1])")
            loader.plan = dataclasses.replace(loader.plan, scale=torch.full_like(loader.plan.scale, 1.0 / 255.0),
                                              shift=torch.zeros_like(loader.plan.shift))
        return loader

    def batches(self, split: str, limit: Optional[int] = None, pixels: bool = True, spread: bool = False,
                device: str | torch.device = "cpu") -> Iterator[tuple[Tensor, Tensor]]:
        """(images, labels) of ``split`` in order: pixels in [0, 1], or normalized as the model saw them in training
        (``pixels=False``). ``limit``: the first N images, or N spread evenly over the split (``spread``)."""
        images = getattr(self.splits, split)
        if limit is not None and limit < len(images):
            index = torch.linspace(0, len(images) - 1, limit).round().long() if spread else range(limit)
            images = images.subset(index)
        for batch in self._loader(images, pixels, device):
            yield batch.images, batch.labels


def load_source(source: str | Path, allowed_imports: Iterable[str] = (), trust_code: bool = False) -> Source:
    """Resolve a finished run directory (its ``model.safetensors``) or a student ``.safetensors`` file.

    ``allowed_imports`` / ``trust_code``: the plug-in modules the file's metadata may import (see
    :func:`kdlab.models.saved.load_model`)."""

    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    run: RunDir | None
    if path.is_dir():
        run = RunDir(path)
        if not run.finished():
            raise KdlabError(f"{path} is not a finished kdlab run (no {run.result.name}): finish training it, "
                             f"or pass a student .safetensors file")
        if not run.model.is_file():
            raise CheckpointError(f"{path} holds no student model ({run.model.name}); export a student run")
        run.check_finished()  # a damaged student is never shipped
        weights = run.model
    else:
        weights = path
        run = RunDir(path.parent) if RunDir(path.parent).config.is_file() else None
    try:
        model, meta = load_model(weights, torch.device("cpu"), allowed_imports=allowed_imports, trust_code=trust_code)
    except SafetensorError as exc:  # a corrupt header escapes kdlab.files.load_weights
        raise CheckpointError(f"{weights}: not a readable safetensors checkpoint ({str(exc).splitlines()[0]})") \
            from None
    if not isinstance(meta.get("dataset"), dict):
        raise CheckpointError(f"{weights} does not say which data it was trained on (no dataset metadata)")
    data = from_dict(DataConfig, dict(meta["dataset"]), prefix="dataset.")
    return Source(weights=weights, run=run, model=model, meta=meta, data=data)
