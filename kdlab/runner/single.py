"""One training run from a ``TrainConfig``: data, models, method, engine, run directory.

Train-or-load: a run directory that already holds a finished run with the same config returns its result; an
interrupted one resumes from its last checkpoint; one that holds a *different* config is refused (it is never
overwritten).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Callable

import torch
import yaml

import kdlab
from kdlab.config import DataConfig, TrainConfig, from_dict, to_dict
from kdlab.data import Splits, load_splits, make_loader
from kdlab import files
from kdlab.engine.device import resolve_device, seed_everything, use_bf16
from kdlab.engine.host import tune_cpu_allocator
from kdlab.engine.runio import RunIO
from kdlab.engine.trainer import EngineOptions, TeacherCache, Trainer
from kdlab.errors import ConfigError
from kdlab.methods import build_method
from kdlab.models import create_model
from kdlab.models.saved import load_model, model_meta
from kdlab.models.weights import load_pretrained


def validate_train_config(cfg: TrainConfig) -> None:
    """Check names and method hyperparameters before any data is loaded (fail fast, one line)."""
    from kdlab.data import DATASETS
    from kdlab.methods import method_params_cls
    from kdlab.models.registry import EXTERNAL_PREFIXES, MODELS

    if not cfg.model.name.startswith(EXTERNAL_PREFIXES):
        MODELS.get(cfg.model.name)
    DATASETS.get(cfg.dataset.name)
    from_dict(method_params_cls(cfg.method.name), cfg.method.params, prefix="method.")
    if cfg.epochs < 1:
        raise ConfigError("config key 'epochs': must be at least 1")


def default_run_name(cfg: TrainConfig) -> str:
    return f"{cfg.model.name}-{cfg.method.name}-{cfg.dataset.name}-s{cfg.seed}".replace(":", "_").replace("/", "_")


def run_dir_for(cfg: TrainConfig) -> Path:
    return Path(cfg.out_dir) / (cfg.name or default_run_name(cfg))


def check_run_dir(run_dir: Path, cfg: TrainConfig) -> dict | None:
    """The finished result if ``run_dir`` already holds this run; refuse a directory holding another config."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return None
    previous = yaml.safe_load(saved.read_text())
    if previous != to_dict(cfg):
        changed = sorted(_diff_keys(previous, to_dict(cfg)))
        raise ConfigError(f"{run_dir} holds a run with a different config ({', '.join(changed[:3])}); "
                          f"set name=... or out_dir=... for a new run")
    result = run_dir / "result.json"
    return json.loads(result.read_text()) if result.is_file() else None


def _diff_keys(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in set(a) | set(b) for k in _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def environment() -> dict:
    """What produced a run: versions, git revision, hardware."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(kdlab.__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        rev = None
    return {"kdlab": kdlab.__version__, "git_revision": rev, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def build_student(cfg: TrainConfig, info) -> torch.nn.Module:
    model = create_model(cfg.model.name, num_classes=info.num_classes, in_channels=info.in_channels,
                         **cfg.model.kwargs)
    if cfg.model.pretrained:
        load_pretrained(model, cfg.model.pretrained)
    return model


def load_teacher(path: str, info, device: torch.device) -> torch.nn.Module:
    teacher, meta = load_model(path, device)
    if meta.get("num_classes") != info.num_classes or meta.get("in_channels") != info.in_channels:
        raise ConfigError(f"teacher {path} was trained for {meta.get('num_classes')} classes and "
                          f"{meta.get('in_channels')} channels; this dataset has {info.num_classes} and "
                          f"{info.in_channels}")
    return teacher


def run(cfg: TrainConfig, splits: Splits | None = None,
        teacher_cache: Callable[[str], TeacherCache] | None = None, io_rank: int = 0) -> dict:
    """Train (or load, or resume) the run described by ``cfg``; returns its flat result dict.

    ``splits``: the already loaded data (an experiment loads it once). ``teacher_cache``: called with the training
    stream's key, returns a provider of the teacher's logits for each batch (shared by all methods of a seed); used
    only when the method reads nothing but the teacher's logits.
    """
    run_dir = run_dir_for(cfg)
    finished = check_run_dir(run_dir, cfg)
    if finished is not None:
        return finished
    device = resolve_device(cfg.device)
    bf16 = use_bf16(cfg.precision, device)
    seed_everything(cfg.seed)
    splits = splits if splits is not None else load_splits(cfg.dataset)
    student = build_student(cfg, splits.info)
    teacher = load_teacher(cfg.teacher, splits.info, device) if cfg.teacher else None
    method = build_method(cfg.method.name, cfg.method.params, student, teacher)
    train_loader = make_loader(splits.train, splits.info, cfg.dataset, train=True, device=device, seed=cfg.seed)
    eval_loaders = {split: make_loader(getattr(splits, split), splits.info, cfg.dataset, train=False, device=device)
                    for split in ("val", "test")}
    _prepare(method, train_loader, splits, device)
    provider = None
    if teacher_cache is not None and teacher is not None and method.uses_teacher_logits_only():
        provider = teacher_cache(train_loader.stream_key)
    io = RunIO(run_dir, rank=io_rank, progress=cfg.progress and not os.environ.get("KDLAB_NO_PROGRESS"))
    allocator = tune_cpu_allocator() if device.type == "cpu" else None
    io.write_json(io.dir.meta, {**environment(), "data_fingerprint": splits.fingerprint, "device": str(device),
                                "bf16": bf16, "cpu_allocator": allocator})
    files.write_text(io.dir.config, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    meta = model_meta(cfg.model.name, cfg.model.kwargs, splits.info, to_dict(cfg.dataset), precision=cfg.precision)
    options = EngineOptions(epochs=cfg.epochs, optim=cfg.optim, device=device, bf16=bf16,
                            channels_last=cfg.channels_last, compile=cfg.compile,
                            eval_test_every_epoch=cfg.eval_test_every_epoch, model_meta=meta)
    io.log(f"training {run_dir.name}: {cfg.model.name} with {cfg.method.name} on {cfg.dataset.name} "
           f"({len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test) on {device}"
           f"{' bf16' if bf16 else ''}")
    result = Trainer(method, train_loader, eval_loaders, options, io, teacher_cache=provider).fit()
    if provider is not None:
        provider.flush()
    io.write_json(io.dir.result, result)
    return result


def _prepare(method, train_loader, splits: Splits, device: torch.device) -> None:
    """Let a method size its extra modules (adapters, heads, banks) from one real batch, before the optimizer exists."""
    train_loader.set_epoch(0)
    batch = next(iter(train_loader))
    method.to(device)
    method.prepare(batch.images[:2], num_samples=len(splits.train), num_classes=splits.info.num_classes)


def evaluate_checkpoint(path: str, overrides: dict | None = None, device_name: str = "auto") -> dict:
    """Evaluate a saved student (a run directory or a ``.safetensors`` file) on its dataset's val and test splits."""
    from kdlab.engine.evaluate import evaluate

    device = resolve_device(device_name)
    model, meta = load_model(path, device)
    data_cfg = from_dict(DataConfig, {**meta["dataset"], **(overrides or {})}, prefix="dataset.")
    splits = load_splits(data_cfg)
    result: dict = {"epochs": meta.get("epoch"), "run_dir": str(Path(path).parent if Path(path).is_file() else path),
                    "model": meta.get("model")}
    for split in ("val", "test"):
        loader = make_loader(getattr(splits, split), splits.info, data_cfg, train=False, device=device)
        if loader.num_samples:
            metrics = evaluate(model, loader, device)
            result.update({f"{split}_{k}": v for k, v in metrics.items() if k != "n"})
    return result
