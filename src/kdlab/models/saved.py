"""Self-describing model files: safetensors weights whose metadata says how to rebuild the model and its data.

The metadata (under the ``kdlab`` key, see :mod:`kdlab.files`) names the architecture (a registry name, a
``module:Name`` path of a plug-in, or ``torchvision:``/``timm:``), its keyword arguments, the plug-in modules it needs
imported, the number of classes and input channels, the class names and the dataset settings to evaluate it as it was
trained. :func:`load_model` rebuilds the model from that alone, in a new process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

import kdlab
from kdlab.errors import CheckpointError
from kdlab.files import load_weights
from kdlab.models.registry import EXTERNAL_PREFIXES, create_model
from kdlab.plugins import check_trusted, import_modules, module_names
from kdlab.rundir import weights_file

# Dataset settings a saved model needs to be evaluated as it was trained (no augmentation, no subsets of train).
EVAL_DATA_KEYS = ("name", "root", "val_ratio", "split_seed", "image_size", "normalize", "channels", "pad",
                  "train_subset", "test_subset", "eval_batch_size")


def model_meta(name: str, kwargs: dict, info: Any, data: dict, imports: list[str] | None = None,
               precision: str | None = None) -> dict:
    """The metadata stored with every weights file of a run (``info``: the run's ``kdlab.data.DatasetInfo``, which
    models do not import)."""
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


# Keyword arguments of a torchvision / timm model that would read a file or fetch weights: a file's metadata may not
# set them (timm's ``checkpoint_path`` unpickles; ``pretrained``/``weights`` download)
_EXTERNAL_LOADING_KWARGS = ("checkpoint_path", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "weights",
                            "weights_backbone", "cache_dir")


def check_meta(meta: object, path: Path | str = "checkpoint") -> dict:
    """The metadata of a kdlab model file, its fields checked (one-line CheckpointError naming the file): ``model`` a
    name, ``num_classes`` / ``in_channels`` positive integers, ``model_kwargs`` a mapping, ``imports`` module names."""
    if not isinstance(meta, dict) or "model" not in meta:
        raise CheckpointError(f"{path} is not a kdlab model checkpoint (no model metadata); "
                              f"use it as model.pretrained=... instead")
    problems = []
    if not isinstance(meta["model"], str) or not meta["model"]:
        problems.append(f"model {meta['model']!r} is not a name")
    for key in ("num_classes", "in_channels"):
        value = meta.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append(f"{key} is {value!r}, not a positive integer" if key in meta else f"no {key}")
    if not isinstance(meta.get("model_kwargs", {}), dict):
        problems.append("model_kwargs is not a mapping")
    imports = meta.get("imports") or []
    if not isinstance(imports, list) or not all(isinstance(m, str) for m in imports):
        problems.append("imports is not a list of module names")
    if problems:
        raise CheckpointError(f"{path} has malformed kdlab metadata ({problems[0]}); it was not written by kdlab or "
                              f"was edited: retrain or re-save the model")
    return meta


def required_imports(meta: dict) -> list[str]:
    """The modules rebuilding the model ``meta`` describes would import: its recorded ``imports`` and the module of a
    ``module:Name`` architecture (registered names and ``torchvision:``/``timm:`` import none of the user's code)."""
    return list(dict.fromkeys([*(meta.get("imports") or []), *module_names([str(meta.get("model") or "")])]))


def check_trusted_meta(meta: dict, path: Path | str, allowed_imports: Iterable[str] = (),
                       trust_code: bool = False) -> None:
    """Refuse (one line, naming the option to add) a file whose metadata would import code the user did not name for
    this command (:func:`kdlab.plugins.check_trusted`), or set a library model's file-loading arguments."""
    check_meta(meta, path)
    check_trusted(required_imports(meta), allowed_imports, trust_code, f"{path} (its model metadata)")
    if meta["model"].startswith(EXTERNAL_PREFIXES) and not trust_code:
        loading = sorted(set(meta.get("model_kwargs") or {}) & set(_EXTERNAL_LOADING_KWARGS))
        if loading:
            raise CheckpointError(f"{path} sets {meta['model']}'s argument {loading[0]!r}, which reads or fetches "
                                  f"weights: refused (pass trust_code=True if you trust the file)")


def build_from_meta(meta: dict, path: Path | str = "checkpoint", allowed_imports: Iterable[str] = (),
                    trust_code: bool = False) -> torch.nn.Module:
    """A freshly initialized model of the architecture ``meta`` describes. Its plug-in modules are imported only when
    the user allowed them (``allowed_imports``: the command's ``--import`` / ``imports:``; or ``trust_code``):
    a file's metadata alone can name registered models only, so loading a file never runs code."""
    check_trusted_meta(meta, path, allowed_imports, trust_code)
    import_modules(required_imports(meta))
    return create_model(meta["model"], num_classes=meta["num_classes"], in_channels=meta["in_channels"],
                        **meta.get("model_kwargs", {}))


def load_model(path: str | Path, device: torch.device | str = "cpu", model: torch.nn.Module | None = None,
               factories: Mapping[str, Callable[[], torch.nn.Module]] | None = None,
               allowed_imports: Iterable[str] = (), trust_code: bool = False) -> tuple[torch.nn.Module, dict]:
    """Rebuild (or fill the given ``model``) and load a kdlab checkpoint; returns it in eval mode on ``device``.

    ``factories``: architecture name -> a function making the module (the Python API's own objects, which no name
    rebuilds in this process); used when the checkpoint's architecture is among them. ``allowed_imports``: the plug-in
    modules the user named for this command (``--import`` / ``imports:``), the only ones a file's metadata may have
    imported; ``trust_code=True`` imports whatever the file names (like Hugging Face's ``trust_remote_code``).
    """
    path = resolve_checkpoint(path)
    state, meta = load_weights(path)
    given = model
    if model is None and factories and isinstance(meta, dict) and meta.get("model") in factories:
        model = given = factories[meta["model"]]()
    model = model if model is not None else build_from_meta(meta, path, allowed_imports, trust_code)
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
    return model.to(torch.device(device)).eval(), meta
