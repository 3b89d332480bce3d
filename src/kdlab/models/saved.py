"""Self-describing model files: safetensors weights whose metadata says how to rebuild the model and its data.

The metadata (under the ``kdlab`` key, see :mod:`kdlab.files`) names the architecture (a registry name, a
``module:Name`` path of a plug-in, or ``torchvision:``/``timm:``), its keyword arguments, the plug-in modules it needs
imported, the number of classes and input channels, the class names and the dataset settings to evaluate it as it was
trained. :func:`load_model` rebuilds the model from that alone, in a new process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import torch

import kdlab
from kdlab.errors import CheckpointError
from kdlab.files import load_weights
from kdlab.models.registry import create_model
from kdlab.rundir import weights_file

# Dataset settings a saved model needs to be evaluated as it was trained (no augmentation, no subsets of train).
EVAL_DATA_KEYS = ("name", "root", "val_ratio", "split_seed", "image_size", "normalize", "channels", "pad",
                  "train_subset", "test_subset", "eval_batch_size")


def model_meta(name: str, kwargs: dict, info, data: dict, imports: list[str] | None = None,
               precision: str | None = None) -> dict:
    """The metadata stored with every weights file of a run."""
    return {
        "kdlab_version": kdlab.__version__,
        "model": name,
        "model_kwargs": dict(kwargs),
        "imports": list(imports or []),
        "num_classes": info.num_classes,
        "in_channels": info.in_channels,
        "class_names": list(info.class_names),
        "dataset": {k: data[k] for k in EVAL_DATA_KEYS if k in data},
        "precision": precision,
    }


def resolve_checkpoint(path: str | Path) -> Path:
    """:func:`kdlab.rundir.weights_file`, which must exist."""
    path = weights_file(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def build_from_meta(meta: dict, path: Path | str = "checkpoint") -> torch.nn.Module:
    """A freshly initialized model of the architecture ``meta`` describes (its plug-ins imported first)."""
    from kdlab.plugins import import_modules

    if "model" not in meta:
        raise CheckpointError(f"{path} is not a kdlab model checkpoint (no model metadata); "
                              f"use it as model.pretrained=... instead")
    import_modules(meta.get("imports") or [])
    return create_model(meta["model"], num_classes=meta["num_classes"], in_channels=meta["in_channels"],
                        **meta.get("model_kwargs", {}))


def load_model(path: str | Path, device: torch.device, model: torch.nn.Module | None = None,
               factories: Mapping[str, Callable[[], torch.nn.Module]] | None = None) -> tuple[torch.nn.Module, dict]:
    """Rebuild (or fill the given ``model``) and load a kdlab checkpoint; returns it in eval mode on ``device``.

    ``factories``: architecture name -> a function making the module (the Python API's own objects, which no name
    rebuilds in this process); used when the checkpoint's architecture is among them.
    """
    path = resolve_checkpoint(path)
    state, meta = load_weights(path)
    given = model
    if model is None and factories and meta.get("model") in factories:
        model = given = factories[meta["model"]]()
    model = model if model is not None else build_from_meta(meta, path)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes differ
        lines = str(exc).splitlines()
        raise CheckpointError(f"{path} does not fit {meta.get('model', type(model).__name__)}: "
                              f"{lines[1].strip() if len(lines) > 1 else exc}") from None
    if missing or unexpected:
        hint = ""
        if given is None and ":" in str(meta.get("model")) and not meta.get("model_kwargs"):
            hint = (f"; it was saved from a {meta['model']} built with arguments kdlab does not know: pass the module "
                    f"(kdlab.load_model(path, model=...)) or give the model as {{'name': ..., <its arguments>}}")
        raise CheckpointError(f"{path} does not fit {meta.get('model', type(model).__name__)}: "
                              f"missing {missing[:3]}, unexpected {unexpected[:3]}{hint}")
    return model.to(device).eval(), meta
