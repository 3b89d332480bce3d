"""Read and save state dicts safely: safetensors, or ``torch.load(weights_only=True)``, never plain pickle.

Below :mod:`kdlab.models.weights` (which adapts what it reads to a model) and :mod:`kdlab.models.hub` (which reads the
hubs' cache files), so both read files the same way.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from kdlab.errors import CheckpointError

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
STRIPPED_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile
SHOWN_KEYS = 3


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def few_keys(keys: list[str]) -> str:
    """The first few of ``keys`` for a one-line message (``a, b, c, ...``)."""
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (", ..." if len(keys) > SHOWN_KEYS else "")


def _unknown_format(path: Path) -> CheckpointError:
    known = ", ".join(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)
    return CheckpointError(f"unknown weights format {path.suffix or '(no suffix)'!r} for {path}; use one of: {known}")


def _load_raw(path: Path) -> object:
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors.torch import load_file  # (only for a .safetensors file)

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
            raise CheckpointError(f"cannot read {path} as safetensors ({_first_line(exc)})") from None
    if suffix in TORCH_SUFFIXES:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            # torch names the refused object "Unsupported global" (2.4+), "unsupported GLOBAL" (newer) or
            # "Unsupported class" (older).
            if not any(word in str(exc).lower() for word in ("unsupported global", "unsupported class")):
                raise CheckpointError(f"cannot read {path}: not a file torch.save wrote (corrupt or foreign)") from None
            raise CheckpointError(
                f"{path} holds Python objects besides tensors; refusing to unpickle it (weights_only=True), "
                "re-save its state dict or convert it to .safetensors"
            ) from None
        except Exception as exc:
            raise CheckpointError(f"cannot read {path} ({_first_line(exc)})") from None
    raise _unknown_format(path)


def strip_prefixes(key: str) -> str:
    """``key`` without the wrapper prefixes of :data:`STRIPPED_PREFIXES`, however nested."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in STRIPPED_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a ``torch.save`` file, unwrapping training checkpoints.

    Nesting under ``state_dict``/``model``/``model_state_dict`` is unwrapped and the ``module.`` (DDP) and
    ``_orig_mod.`` (torch.compile) prefixes are stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    obj = _load_raw(path)
    for _ in range(len(WRAPPER_KEYS) + 1):  # bounded: nesting is at most a couple of levels in practice
        if not isinstance(obj, Mapping) or all(isinstance(v, Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path} holds no state dict (found {type(obj).__name__})")
    other = [str(k) for k, v in obj.items() if not isinstance(v, Tensor)]
    if other:
        raise CheckpointError(
            f"{path} holds no state dict: entries {few_keys(other)} are not tensors and none of "
            f"{', '.join(WRAPPER_KEYS)} wraps one"
        )
    return {strip_prefixes(str(k)): v for k, v in obj.items()}


def save_state_dict(state: nn.Module | Mapping[str, Tensor], path: str | os.PathLike[str]) -> None:
    """Write a state dict (or a module's) as ``.safetensors`` or, for the torch suffixes, with ``torch.save``."""
    path = Path(path)
    tensors = state.state_dict() if isinstance(state, nn.Module) else dict(state)
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        from safetensors.torch import save_file  # (only for a .safetensors file)

        # safetensors refuses views and shared storage; detached contiguous copies are always accepted.
        save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(path))
    elif path.suffix.lower() in TORCH_SUFFIXES:
        torch.save({k: v.detach().clone() for k, v in tensors.items()}, path)
    else:
        raise _unknown_format(path)
