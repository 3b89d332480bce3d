"""``@fp32``: run a loss function in float32 with autocast off, whatever precision the forward pass used.

Under bf16/fp16 autocast, matrix products (Gram matrices, pairwise distances, memory-bank scores) would otherwise run in
reduced precision even on ``.float()`` inputs. The decorator turns autocast off for the device of the first tensor
argument and casts every floating-point tensor argument narrower than float32 (also inside lists and tuples) to
float32; float64 stays float64.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import torch
from torch import Tensor

F = TypeVar("F", bound=Callable[..., Any])


def _to_fp32(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() and torch.finfo(value.dtype).bits < 32 else value
    if isinstance(value, (list, tuple)):
        return type(value)(_to_fp32(v) for v in value)
    return value


def _device_type(values: Any) -> str:
    for value in values:
        if isinstance(value, Tensor):
            return value.device.type
        if isinstance(value, (list, tuple)) and value:
            found = _device_type(value)
            if found:
                return found
    return ""


def fp32(fn: F) -> F:
    """Decorate a loss function: at least float32 tensor arguments, autocast disabled inside."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        device = _device_type(list(args) + list(kwargs.values())) or "cpu"
        args = tuple(_to_fp32(a) for a in args)
        kwargs = {k: _to_fp32(v) for k, v in kwargs.items()}
        with torch.autocast(device_type=device, enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
