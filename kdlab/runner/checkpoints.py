"""Self-describing student checkpoints: safetensors weights whose metadata says how to rebuild the model and data."""

from __future__ import annotations

from pathlib import Path

import torch

import kdlab
from kdlab.config import DataConfig, to_dict
from kdlab.engine.checkpoint import load_weights
from kdlab.errors import CheckpointError
from kdlab.models import create_model

# Dataset settings a saved model needs to be evaluated as it was trained (no augmentation, no subsets of train).
_EVAL_DATA_KEYS = ("name", "root", "val_ratio", "split_seed", "image_size", "normalize", "test_subset",
                   "eval_batch_size")


def model_meta(name: str, kwargs: dict, info, data_cfg: DataConfig) -> dict:
    data = to_dict(data_cfg)
    return {
        "kdlab_version": kdlab.__version__,
        "model": name,
        "model_kwargs": dict(kwargs),
        "num_classes": info.num_classes,
        "in_channels": info.in_channels,
        "class_names": list(info.class_names),
        "dataset": {k: data[k] for k in _EVAL_DATA_KEYS},
    }


def checkpoint_file(path: str | Path) -> Path:
    """The weights file ``path`` names: a run directory means its ``model.safetensors``."""
    path = Path(path)
    return path / "model.safetensors" if path.is_dir() else path


def resolve_checkpoint(path: str | Path) -> Path:
    """:func:`checkpoint_file`, which must exist."""
    path = checkpoint_file(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def load_model(path: str | Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """Rebuild and load a kdlab checkpoint; returns the model in eval mode on ``device`` and its metadata."""
    path = resolve_checkpoint(path)
    state, meta = load_weights(path)
    if "model" not in meta:
        raise CheckpointError(f"{path} is not a kdlab model checkpoint (no model metadata); "
                              f"use it as model.pretrained=... instead")
    model = create_model(meta["model"], num_classes=meta["num_classes"], in_channels=meta["in_channels"],
                         **meta.get("model_kwargs", {}))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit {meta['model']}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.to(device).eval(), meta
