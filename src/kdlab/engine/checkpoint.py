"""The training state beside the weights: optimizer, scheduler, RNG and history, as a ``torch.save`` of plain
containers, tensors and numbers, loaded with ``weights_only=True`` only (nothing is ever unpickled beyond that)."""

from __future__ import annotations

from pathlib import Path

import torch

from kdlab.errors import CheckpointError
from kdlab.files import atomic_write


def save_state(path: str | Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable / unsafe file is a user-facing checkpoint problem
        raise CheckpointError(f"{path}: unreadable training state ({str(exc).splitlines()[0]})") from None
