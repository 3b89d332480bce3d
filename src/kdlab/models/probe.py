"""One forward pass on a couple of real inputs before anything is trained or written: a model that cannot take its
data's images (too small for its pooling, another channel count) is a one-line error naming the input size, not a
traceback from deep inside the first training step."""

from __future__ import annotations

import re

import torch
from torch import nn

from kdlab.errors import InputShapeError

# What PyTorch's shape errors say ("Output size is too small", "mat1 and mat2 shapes cannot be multiplied", "expected
# input[2, 1, 28, 28] to have 3 channels", "Expected more than 1 value per channel"...)
SHAPE_WORDS = re.compile(r"size|shape|channel|dimension|mat1|expected input", re.IGNORECASE)


def check_forward(model: nn.Module, images: torch.Tensor, what: str) -> None:
    """Run ``model`` (in eval mode, without gradients, state untouched) on ``images[:2]``; an error of the forward
    pass becomes an :class:`InputShapeError` that says which input size ``what`` cannot take."""
    sample = images[:2]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(sample)
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
