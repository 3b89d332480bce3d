"""kdlab's Python API: what the CLI runs, callable from a script or a notebook with the user's own objects.

    import kdlab
    teacher = kdlab.train(model="resnet20", data="fashion_mnist", epochs=4)
    student = kdlab.distill(student=MyNet(), teacher=teacher, method={"name": "kd", "T": 4}, data="fashion_mnist",
                            epochs=3, optim={"lr": 0.05})
    student.metrics["test_top1"], student.history, student.model, student.run_dir
    kdlab.evaluate(student.run_dir)

Keyword arguments are the keys of the CLI and the YAML files (``epochs=``, ``optim={...}``, ``dataset={...}``,
``method={"name": "kd", "T": 4}``, ``imports=[...]``) and are validated the same way. A model, student or teacher may
be a registered name (``"resnet18"``, ``"my_models:Net"``), a config dict (``{"name": "resnet18", "pretrained":
"torchvision"}``), a run directory or checkpoint, a :class:`Run`, or an ``nn.Module``; data a dataset name, a dict of
dataset settings, an image folder, or ``torch.utils.data.Dataset``/``DataLoader`` objects (see
:mod:`kdlab.data.custom`); a method a name, a dict, a Method subclass or a loss function. Semantics are the CLI's: a
run directory per run, train-or-load, exact resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from torch import nn

from kdlab.config import DataConfig, TrainConfig, from_dict, to_dict
from kdlab.console import ensure_logging, log
from kdlab.data import load_splits
from kdlab.data.custom import data_parts
from kdlab.errors import ConfigError
from kdlab.files import read_metadata
from kdlab.models import create_model
from kdlab.models.saved import check_trusted_meta, required_imports, resolve_checkpoint
from kdlab.models.weights import load_pretrained
from kdlab.plugins import object_path
from kdlab.rundir import is_checkpoint
from kdlab.runs.evaluate import evaluate_checkpoint, evaluate_module
from kdlab.runs.live import Live
from kdlab.runs.result import Run
from kdlab.runs.train import train_run

__all__ = ["train", "distill", "evaluate", "Run"]


def train(model: Any = "resnet20", data: Any = "fashion_mnist", *, method: Any = "ce", teacher: Any = None,
          trust_code: bool = False, **settings: Any) -> Run:
    """Train ``model`` (cross-entropy unless ``method`` says otherwise) on ``data``; train-or-load, resumable.

    ``trust_code=True``: a checkpoint given as the model or the teacher may import the plug-in modules its metadata
    names (as Hugging Face's ``trust_remote_code``); otherwise only those in ``imports=[...]`` are."""
    ensure_logging()
    cfg, live, splits = _config(model, data, method, teacher, settings, trust_code)
    result, trained = train_run(cfg, splits=splits, live=live)
    return Run.from_result(cfg, result, trained, live)


def distill(student: Any, teacher: Any, method: Any = "kd", data: Any = "fashion_mnist", *, trust_code: bool = False,
            **settings: Any) -> Run:
    """Distill ``teacher`` (frozen, in eval mode) into ``student`` with ``method``; see :func:`train`.

    ``teacher`` may be a list (``[run_a, run_b]``): an ensemble teacher whose logits are the mean of its members'
    (``teacher_weights=[...]`` weighs them) or, with ``teacher_mode="confident"``, per sample the most confident
    member's (:mod:`kdlab.runs.ensemble`)."""
    if method in ("ce", None):
        raise ConfigError("distill needs a method (method='kd', 'fitnets', 'at', ...); use kdlab.train for plain "
                          "training")
    return train(student, data, method=method, teacher=teacher, trust_code=trust_code, **settings)


def evaluate(model: Any, data: Any = None, *, device: str = "auto", imports: Sequence[str] = (),
             trust_code: bool = False, **dataset: Any) -> dict:
    """Val and test metrics of a trained model: a :class:`Run`, a run directory / ``.safetensors`` file (evaluated on
    its own data, split and precision), or an ``nn.Module`` with ``data``. ``dataset`` keys override data settings."""
    if isinstance(model, Run):
        return model.evaluate(data, device=device, **dataset)
    if isinstance(model, nn.Module):
        if data is None:
            raise ConfigError("evaluate(module) needs data=...")
        live = Live()
        cfg = from_dict(DataConfig, {**_data_entry(data, live), **dataset}, prefix="dataset.")
        return evaluate_module(model, cfg, live, device)
    if data is not None:
        dataset = {**_data_entry(data, Live()), **dataset}
    return evaluate_checkpoint(str(model), dataset, device, imports=imports, trust_code=trust_code)


# -- building a config from Python objects ---------------------------------------------------------------------------
def _config(model: Any, data: Any, method: Any, teacher: Any, settings: dict,
            trust_code: bool = False) -> tuple[TrainConfig, Live, Any]:
    live = Live()
    tree: dict[str, Any] = dict(settings)
    imports = list(settings.get("imports") or [])
    teachers = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    for given in (model, *teachers):  # checkpoints: the code they name runs only when the user trusts it
        if isinstance(given, (str, Path)) and is_checkpoint(given):
            imports += _trusted_imports(given, imports, trust_code)
    tree["imports"] = list(dict.fromkeys(imports))
    tree["model"] = _model_entry(model, live)
    tree["dataset"] = {**_data_entry(data, live), **dict(settings.get("dataset") or {})}
    tree["method"] = _method_entry(method, live)
    cfg = from_dict(TrainConfig, tree)
    splits = None
    if isinstance(teacher, (list, tuple)):  # an ensemble teacher (kdlab.runs.ensemble): one entry per member
        if not teacher:
            raise ConfigError("teacher: an empty list; give one teacher or several")
        names = []
        for member in teacher:
            name, splits = _teacher(member, cfg, live, splits)
            names.append(name)
        cfg.teacher = names
    elif teacher is not None:
        cfg.teacher, splits = _teacher(teacher, cfg, live)
    return cfg, live, splits


def _model_entry(model: Any, live: Live) -> dict:
    if isinstance(model, Run):
        model = model.run_dir
    if isinstance(model, nn.Module):
        return {"name": live.add("models", model)}
    if isinstance(model, dict):
        return dict(model)
    if isinstance(model, (str, Path)) and is_checkpoint(model):
        return _checkpoint_entry(model)
    if isinstance(model, str):
        return {"name": model}
    raise ConfigError(f"model must be a name, a config dict, a checkpoint or an nn.Module; got {type(model).__name__}")



def _trusted_imports(path: str | Path, imports: list[str], trust_code: bool) -> list[str]:
    """The modules a checkpoint's metadata names, once allowed (by ``imports`` or ``trust_code``; else one line)."""
    weights = resolve_checkpoint(path)
    meta = read_metadata(weights)
    check_trusted_meta(meta, weights, imports, trust_code)
    return required_imports(meta)


def _checkpoint_entry(path: str | Path) -> dict:
    """Start from a kdlab checkpoint: its architecture, initialized from its weights."""
    weights = resolve_checkpoint(path)
    meta = read_metadata(weights)  # the metadata only: the weights load later, as the model's initialization
    if "model" not in meta:
        raise ConfigError(f"{weights} is not a kdlab checkpoint; pass model={{'name': ..., 'pretrained': '{weights}'}}")
    return {"name": meta["model"], "pretrained": str(weights), **meta.get("model_kwargs", {})}


def _data_entry(data: Any, live: Live) -> dict:
    if isinstance(data, dict) and ("name" in data or not set(data) & {"train", "val", "test"}):
        return dict(data)
    if isinstance(data, (str, Path)):
        path = Path(data)
        return {"name": "imagefolder", "root": str(path)} if path.is_dir() else {"name": str(data)}
    if data is None:
        raise ConfigError("data is missing: a dataset name, an image folder or Dataset objects")

    train = data_parts(data)["train"]
    name = live.add("data", data, name=_object_name(getattr(train, "dataset", train)))
    return {"name": name}


def _object_name(obj: Any) -> str:
    return object_path(obj)


def _method_entry(method: Any, live: Live) -> dict:
    if isinstance(method, dict):
        entry = dict(method)
        if not isinstance(entry.get("name"), str):
            entry["name"] = live.add("methods", entry["name"])
        return entry
    if isinstance(method, str):
        return {"name": method}
    return {"name": live.add("methods", method)}


def _teacher(teacher: Any, cfg: TrainConfig, live: Live, splits: Any = None) -> tuple[str, Any]:
    """The config's teacher string, and the data when building the teacher needed it (it is reused for the run;
    ``splits``: the data already loaded for another member of an ensemble)."""
    if isinstance(teacher, Run):  # in this process its module may be the user's object, which no path rebuilds
        return (live.add("teachers", teacher.model) if teacher.has_live_model else str(teacher.run_dir)), splits
    if isinstance(teacher, nn.Module):
        return live.add("teachers", teacher), splits
    if isinstance(teacher, Path) or (isinstance(teacher, str) and _looks_like_path(teacher)):
        return str(teacher), splits
    entry = {"name": teacher} if isinstance(teacher, str) else dict(teacher)
    name, pretrained = entry.pop("name"), entry.pop("pretrained", None)
    splits = splits or load_splits(cfg.dataset, data=live.data.get(cfg.dataset.name))
    module = create_model(name, num_classes=splits.info.num_classes, in_channels=splits.info.in_channels, **entry)
    if pretrained:
        load_pretrained(module, pretrained, arch=name)
    else:
        log.warning("teacher %s is not trained: it has fresh weights (give a run, a checkpoint or pretrained=...)",
                    name)
    return live.add("teachers", module, name=f"{name}-{pretrained or 'untrained'}"), splits


def _looks_like_path(text: str) -> bool:
    return Path(text).exists() or "/" in text or text.endswith(".safetensors")


def config_dict(run: Run) -> dict:
    """The resolved config of a run as plain data (what its config.yaml holds)."""
    return to_dict(run.config)
