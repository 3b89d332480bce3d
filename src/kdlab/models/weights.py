"""Load pretrained weights safely: files are read by :mod:`kdlab.models.statedict` (safetensors, or
``torch.load(weights_only=True)``, never plain pickle), the hubs' weights by :mod:`kdlab.models.hub`.

``load_pretrained`` loads a torchvision-named state dict into a kdlab model and adapts what differs for a reason:

* first conv, input channels (e.g. RGB weights into a 1-channel model): the filters are averaged over the input-channel
  axis and scaled by the old/new channel ratio, i.e. for 1 channel summed (for a multiple of 3: tiled, divided by the
  multiple). This keeps each filter's total weight, so a gray image gives the response its 3-channel replica gave,
  and the next BatchNorm's running statistics still fit.
* first conv, kernel size (7x7 ImageNet stem into the 3x3 ``small_input`` stem): the kernel is box-resampled to the
  new size with area weights that keep each filter's sum (its response to a flat patch). A 32x32 image is roughly a
  7x-shrunk 224 crop, so a shrunk kernel matches the old receptive content better than a crop of its centre.
* classifier (the model's last ``nn.Linear``, and sibling heads of its shape such as DeiT's ``head_dist``) with
  another number of classes: the checkpoint's classifier is skipped and the model keeps its fresh one; the returned
  :class:`LoadReport` (and the log) names the skipped keys.
* a model's own adaptation: a model with a method ``fit_checkpoint_tensor(key, value) -> Tensor | None`` is asked
  for any other tensor of another shape (the ViTs resample ``pos_embed`` to their patch grid, bicubic; Swin its
  relative position bias tables to its window).
* checkpoint entries naming a non-persistent buffer of the model (Swin's ``relative_position_index``/``attn_mask`` in
  checkpoints of older timm) are dropped: the model computes them.

Anything else that does not fit raises :class:`~kdlab.errors.CheckpointError` with a one-line message.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from kdlab.errors import CheckpointError, ConfigError
from kdlab.models.hub import HUBS, hub_state_dict
from kdlab.models.statedict import few_keys, read_state_dict, save_state_dict, strip_prefixes

__all__ = ["LoadReport", "adapt_first_conv", "load_pretrained", "read_state_dict", "save_state_dict"]

log = logging.getLogger(__name__)


@dataclass
class LoadReport:
    """What ``load_pretrained`` did: loaded keys, keys adapted, classifier keys skipped, keys left missing/unused."""

    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def _area_matrix(n_out: int, n_in: int) -> Tensor:
    """``R[i, j]`` = overlap of output cell ``i`` with input cell ``j`` on a common axis; each column sums to 1."""
    scale = n_in / n_out
    rows = []
    for i in range(n_out):
        lo, hi = i * scale, (i + 1) * scale
        rows.append([max(0.0, min(j + 1.0, hi) - max(float(j), lo)) for j in range(n_in)])
    return torch.tensor(rows, dtype=torch.float64)


def adapt_first_conv(weight: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor | None:
    """Adapt a conv weight ``(out, in, kh, kw)`` to ``shape`` keeping each filter's sum; ``None`` if impossible.

    Input channels: for a multiple of the old count the filters are tiled and divided by the multiple; otherwise
    each new channel gets the channel-sum divided by the new count (1 channel: the plain sum). Either way the sum over
    input channels, hence the response to an image with equal channels, is unchanged.
    Kernel size: area (box) resampling, whose weights sum to one per input cell, so filter sums are unchanged.
    """
    if weight.ndim != 4 or len(shape) != 4 or weight.shape[0] != shape[0]:
        return None
    w = weight.detach().to(torch.float64)
    if tuple(w.shape[2:]) != tuple(shape[2:]):
        rows, cols = _area_matrix(shape[2], w.shape[2]), _area_matrix(shape[3], w.shape[3])
        w = torch.einsum("ik,ockl,jl->ocij", rows, w, cols)
    in_old, in_new = w.shape[1], shape[1]
    if in_new % in_old == 0:
        # e.g. RGB -> two stacked RGB frames: keep the colour filters, split their weight over the copies.
        w = w.repeat(1, in_new // in_old, 1, 1) / (in_new // in_old)
    else:
        # e.g. RGB -> gray: every new channel sees the channel-summed filter, shared out equally.
        w = w.sum(dim=1, keepdim=True).repeat(1, in_new, 1, 1) / in_new
    return w.to(weight.dtype)


def _first_conv_name(model: nn.Module) -> str | None:
    return next((name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def _classifier_names(model: nn.Module) -> list[str]:
    """The last ``nn.Linear`` and the Linears of its shape beside it (same parent: DeiT's ``head``, ``head_dist``)."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        return []
    last_name, last = linears[-1]
    parent = last_name.rpartition(".")[0]
    return [name for name, m in linears if name.rpartition(".")[0] == parent
            and (m.in_features, m.out_features) == (last.in_features, last.out_features)]


def _non_persistent_buffers(model: nn.Module) -> set[str]:
    """Buffers the model computes and does not save (registered with ``persistent=False``)."""
    return {name for name, _ in model.named_buffers()} - set(model.state_dict())


def _fit_to_model(
    model: nn.Module, loaded: dict[str, Tensor], report: LoadReport
) -> tuple[dict[str, Tensor], list[str]]:
    """Adapt the first conv, drop a classifier of another shape; return what to load and the other shape mismatches."""
    target = model.state_dict()
    conv = _first_conv_name(model)
    conv_key = f"{conv}.weight" if conv is not None else None
    head_keys = {f"{head}.{p}" for head in _classifier_names(model) for p in ("weight", "bias")}
    own_fit = getattr(model, "fit_checkpoint_tensor", None)
    computed = _non_persistent_buffers(model)
    fitted: dict[str, Tensor] = {}
    wrong: list[str] = []
    for key, value in loaded.items():
        if key in computed:
            continue
        if key not in target or value.shape == target[key].shape:
            fitted[key] = value
        elif key == conv_key and (adapted := adapt_first_conv(value, target[key].shape)) is not None:
            fitted[key] = adapted
            report.adapted.append(f"{key} {list(value.shape)}->{list(adapted.shape)}")
        elif key in head_keys:
            report.skipped.append(key)
        elif callable(own_fit) and (adapted := own_fit(key, value)) is not None \
                and adapted.shape == target[key].shape:
            fitted[key] = adapted
            report.adapted.append(f"{key} {list(value.shape)}->{list(adapted.shape)}")
        else:
            wrong.append(f"{key} {list(value.shape)} vs model {list(target[key].shape)}")
    return fitted, wrong


def load_pretrained(model: nn.Module, path: str | os.PathLike[str], *, strict: bool = True,
                    arch: str | None = None) -> LoadReport:
    """Load a weights file into ``model`` in place (see the module docstring for what is adapted).

    ``path`` may also be ``torchvision`` or ``timm``: that library's ImageNet weights for architecture ``arch``
    (see :mod:`kdlab.models.hub`). ``strict``: missing or unexpected keys raise a one-line CheckpointError; with
    ``strict=False`` they are only reported. A tensor of the wrong shape outside the first conv and the classifier
    always raises.
    """
    if str(path) in HUBS:
        if arch is None:
            raise ConfigError(f"model.pretrained={path} needs the model's architecture name")
        loaded = {strip_prefixes(k): v for k, v in hub_state_dict(str(path), arch).items()}
        path = f"{path} ImageNet weights"
    else:
        loaded = read_state_dict(path)
    report = LoadReport()
    fitted, wrong = _fit_to_model(model, loaded, report)
    name = type(model).__name__
    if wrong:
        raise CheckpointError(f"{path} does not fit {name}: {len(wrong)} tensors have another shape: {few_keys(wrong)}")
    target = model.state_dict()
    # Checkpoints saved before PyTorch 0.4.1 lack BatchNorm's step counter; the fresh zero is what it would be.
    report.missing = [
        k for k in target if k not in loaded and k not in report.skipped and not k.endswith("num_batches_tracked")
    ]
    report.unexpected = [k for k in fitted if k not in target]
    if strict and (report.missing or report.unexpected):
        raise CheckpointError(
            f"{path} does not fit {name}: {len(report.missing)} missing keys ({few_keys(report.missing) or '-'}), "
            f"{len(report.unexpected)} unexpected keys ({few_keys(report.unexpected) or '-'})"
        )
    model.load_state_dict({k: v for k, v in fitted.items() if k in target}, strict=False)
    report.loaded = [k for k in fitted if k in target]
    if report.adapted:
        log.info("adapted to the model from %s: %s", path, "; ".join(report.adapted))
    if report.skipped:
        log.info("kept the fresh classifier (checkpoint's has another shape): skipped %s", ", ".join(report.skipped))
    if report.missing or report.unexpected:
        log.warning("%s: %d missing, %d unexpected keys", path, len(report.missing), len(report.unexpected))
    return report
