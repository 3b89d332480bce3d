"""One forward pass on a couple of real inputs before anything is trained or written: a model that cannot take its
data's images (too small for its pooling, another channel count) is a one-line error naming the input size, not a
traceback from deep inside the first training step. The same pass checks what comes out: logits of shape
(batch, number of classes), so a model with another output count is refused before it trains (a 12-output student on
10 classes would train silently; 7 outputs on 10 classes fail mid-epoch with "Target 7 is out of bounds")."""

from __future__ import annotations

import re

import torch
from torch import nn

from kdlab.errors import InputShapeError

# What PyTorch's shape errors say ("Output size is too small", "mat1 and mat2 shapes cannot be multiplied", "expected
# input[2, 1, 28, 28] to have 3 channels", "Expected more than 1 value per channel"...)
SHAPE_WORDS = re.compile(r"size|shape|channel|dimension|mat1|expected input", re.IGNORECASE)


def check_forward(model: nn.Module, images: torch.Tensor, what: str, num_classes: int | None = None) -> None:
    """Run ``model`` (in eval mode, without gradients, state untouched) on ``images[:2]``; an error of the forward
    pass becomes an :class:`InputShapeError` that says which input size ``what`` cannot take. A model without
    parameters, or whose output is not a (batch, ``num_classes``) tensor of logits, is refused with one line too."""
    if next(iter(model.parameters()), None) is None:
        raise InputShapeError(f"{what} has no parameters: there is nothing to train or load")
    sample = images[:2]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(sample)
    except (RuntimeError, ValueError) as exc:
        if not SHAPE_WORDS.search(str(exc)):
            raise  # not about the input's shape: a bug, with its traceback
        size = "×".join(str(d) for d in sample.shape[1:])
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise InputShapeError(f"{what} cannot take {size} (channels×height×width) images: {reason}; set "
                              f"dataset.image_size or dataset.pad to a size it takes, or dataset.channels to its "
                              f"channel count") from None
    finally:
        model.train(was_training)
    check_logits(output, len(sample), what, num_classes)


def check_logits(output: object, batch: int, what: str, num_classes: int | None = None) -> None:
    """``output`` must be a (``batch``, ``num_classes``) tensor: one logit per class for each image."""
    if not isinstance(output, torch.Tensor):
        raise InputShapeError(f"{what} returns a {type(output).__name__}, not a tensor of logits (its forward must "
                              f"return one (batch, classes) tensor)")
    shape = tuple(output.shape)
    if output.ndim != 2 or shape[0] != batch:
        raise InputShapeError(f"{what} returns outputs of shape {list(shape)} for {batch} images; expected "
                              f"[{batch}, classes] logits")
    if num_classes is not None and shape[1] != num_classes:
        raise InputShapeError(f"{what} outputs {shape[1]} logits per image but the data has {num_classes} classes; "
                              f"build it with num_classes={num_classes}")
