"""One training run from a ``TrainConfig``: data, models, method, engine, run directory.

Train-or-load: a run directory that already holds a finished run with the same config returns its result; an
interrupted one resumes from its last checkpoint; one that holds a *different* config is refused (it is never
overwritten).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import torch
import yaml

import kdlab
from kdlab.config import DataConfig, TrainConfig, check_plain_name, from_dict, to_dict
from kdlab.console import log
from kdlab.data import Splits, load_splits, make_loader
from kdlab import files
from kdlab.engine import distributed
from kdlab.engine.device import resolve_device, seed_everything, use_bf16
from kdlab.engine.host import tune_cpu_allocator
from kdlab.engine.inference import fold_batchnorm
from kdlab.engine.runio import RunIO
from kdlab.engine.trainer import EngineOptions, TeacherCache, Trainer
from kdlab.errors import ConfigError
from kdlab.data import DATASETS
from kdlab.methods import build_method, parse_method_params
from kdlab.models import create_model
from kdlab.models.probe import check_forward
from kdlab.models.registry import EXTERNAL_PREFIXES, MODELS, canonical_kwargs
from kdlab.models.saved import load_model, model_meta, resolve_checkpoint
from kdlab.models.weights import load_pretrained
from kdlab.plugins import import_modules, module_names
from kdlab.rundir import RunDir
from kdlab.runner.live import Live, plugin_identity


def resolve_config(cfg: TrainConfig, live: Live | None = None) -> TrainConfig:
    """Import the config's plug-ins, check every name and hyperparameter (one-line errors, before any data is read),
    and write the method's hyperparameters out in full: ``method.T=4`` where 4 is the default is the same config."""
    import_modules(cfg.imports)
    live = live or Live()
    check_plain_name(cfg.name, "name")
    if cfg.model.name not in live.models and not cfg.model.name.startswith(EXTERNAL_PREFIXES):
        MODELS.get(cfg.model.name)
    if cfg.dataset.name not in live.data:
        DATASETS.get(cfg.dataset.name)
    method = live.methods.get(cfg.method.name, cfg.method.name)
    params = parse_method_params(method, cfg.method.params)
    if cfg.epochs < 1:
        raise ConfigError("config key 'epochs': must be at least 1")
    model = replace(cfg.model, kwargs=canonical_kwargs(cfg.model.name, cfg.model.kwargs))
    return replace(cfg, model=model, method=replace(cfg.method, params=to_dict(params)))


def default_run_name(cfg: TrainConfig) -> str:
    return f"{cfg.model.name}-{cfg.method.name}-{cfg.dataset.name}-s{cfg.seed}".replace(":", "_").replace("/", "_")


def run_dir_for(cfg: TrainConfig) -> Path:
    return Path(cfg.out_dir) / (cfg.name or default_run_name(cfg))


# Config keys that do not decide a run's result: where it is written (a moved or copied run directory is the same run),
# the display, and the teacher's path (its weights' hash is compared, in identity.json)
_NOT_IDENTITY = ("out_dir", "name", "progress", "teacher")


def check_run_dir(run_dir: Path, cfg: TrainConfig, identity: dict, locked: bool = False) -> dict | None:
    """The finished result if ``run_dir`` already holds this run (its weights verified against their checksums);
    refuse a directory holding another run (another config, or the same config over other plug-in code, teacher or
    initial weights), unless that run stopped before its first checkpoint: then nothing of it is kept (its files are
    removed when ``locked``, i.e. by the process that holds the directory's lock)."""
    files_ = RunDir(run_dir)
    previous = files_.read_config()
    if previous is None:
        return None
    now = to_dict(cfg)
    changed = sorted(_diff_keys(*({k: v for k, v in c.items() if k not in _NOT_IDENTITY} for c in (previous, now))))
    if not changed:
        before = _read_identity(files_)
        changed = [f"identity.{k}" for k in sorted(set(before) | set(identity)) if before.get(k) != identity.get(k)]
    if changed and not files_.finished() and not files_.latest.is_file():
        if locked:
            log.info(f"{run_dir} holds a run that stopped before its first checkpoint; starting it over")
            _clear_unstarted(files_)
        return None
    if changed:
        raise ConfigError(f"{run_dir} holds a run with a different config ({', '.join(changed[:3])}); "
                          f"set name=... or out_dir=... for a new run")
    if files_.finished():
        files_.check_finished()
    return files_.read_result()


def _clear_unstarted(files_: RunDir) -> None:
    """The files a run that never reached its first checkpoint may have left, which must not mix with the next one."""
    for path in (files_.best, files_.failure, files_.metrics, files_.metrics_csv, files_.identity, files_.config):
        path.unlink(missing_ok=True)
    shutil.rmtree(files_.checkpoints, ignore_errors=True)


def _read_identity(files_: RunDir) -> dict:
    try:
        return json.loads(files_.identity.read_text())
    except (OSError, ValueError):
        return {}


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
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def build_student(cfg: TrainConfig, info, live: Live) -> torch.nn.Module:
    if cfg.model.name in live.models:
        model = live.models[cfg.model.name]()
    else:
        model = create_model(cfg.model.name, num_classes=info.num_classes, in_channels=info.in_channels,
                             **cfg.model.kwargs)
    if cfg.model.pretrained:
        load_pretrained(model, cfg.model.pretrained, arch=cfg.model.name)
    return model


def load_teacher(name: str, info, device: torch.device, live: Live) -> torch.nn.Module:
    """The frozen teacher: a live module, or a kdlab checkpoint (a run directory or its model.safetensors)."""
    if name in live.teachers:
        return live.teachers[name].to(device).eval()
    teacher, meta = load_model(name, device, factories=live.models)
    if meta.get("num_classes") != info.num_classes or meta.get("in_channels") != info.in_channels:
        raise ConfigError(f"teacher {name} was trained for {meta.get('num_classes')} classes and "
                          f"{meta.get('in_channels')} channels; this dataset has {info.num_classes} and "
                          f"{info.in_channels}")
    return teacher


def teacher_identity(name: str | None, live: Live) -> str | None:
    """What the teacher is: a live module's hash, or the sha256 of its weights file."""
    if name is None:
        return None
    if name in live.hashes:
        return live.hashes[name]
    path = resolve_checkpoint(name)
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def run_identity(cfg: TrainConfig, live: Live) -> dict:
    """What decides a run's result besides its config: plug-in code, given objects, the teacher's weights."""
    names = [cfg.model.name, cfg.dataset.name, *cfg.method.name.split("+")]
    return {"plugins": plugin_identity(cfg.imports, names, live), "teacher": teacher_identity(cfg.teacher, live)}


def saved_imports(cfg: TrainConfig) -> list[str]:
    """Modules a new process must import to rebuild this run's model: the config's imports and the model's module."""
    return list(dict.fromkeys([*cfg.imports, *module_names([cfg.model.name])]))


def run(cfg: TrainConfig, splits: Splits | None = None, teacher_cache: Callable[..., TeacherCache] | None = None,
        io_rank: int = 0, live: Live | None = None) -> dict:
    """Train (or load, or resume) the run described by ``cfg``; returns its flat result dict.

    ``splits``: the already loaded data (an experiment loads it once). ``teacher_cache``: called with the training
    loader and the run's frozen teacher, returns a provider of the teacher's logits for each batch (shared by all
    methods of a seed, or with fixed views by every seed); used only when the method reads nothing but the teacher's
    logits. ``live``: Python objects named by the config.
    """
    return train_run(cfg, splits, teacher_cache, io_rank, live)[0]


def train_run(cfg: TrainConfig, splits: Splits | None = None,
              teacher_cache: Callable[..., TeacherCache] | None = None, io_rank: int = 0,
              live: Live | None = None) -> tuple[dict, torch.nn.Module | None]:
    """:func:`run`, also returning the trained method (None when a finished run was loaded).

    The run directory is locked while it trains: a second process on the same directory is refused with one line."""
    live = live or Live()
    cfg = resolve_config(cfg, live)
    run_dir, identity = run_dir_for(cfg), run_identity(cfg, live)
    finished = check_run_dir(run_dir, cfg, identity)
    if finished is not None:
        return finished, None
    dist = distributed.from_env()  # torchrun / kdlab run ddp=N: this process is one rank of the run
    io_rank = dist.rank if dist.enabled else io_rank
    with _run_lock(run_dir, io_rank):
        return _train(cfg, run_dir, identity, splits, teacher_cache, io_rank, live, dist)


@contextmanager
def _run_lock(run_dir: Path, io_rank: int) -> Iterator[None]:
    """The run directory's lock (the main process only); a directory it had to create and that stayed empty (the run
    stopped before writing anything) is removed again."""
    if io_rank != 0:
        yield
        return
    created = not run_dir.exists()
    try:
        with files.directory_lock(run_dir, "training this run"):
            yield
    finally:
        if created and run_dir.is_dir() and [p.name for p in run_dir.iterdir()] == [".lock"]:
            shutil.rmtree(run_dir, ignore_errors=True)


def _train(cfg: TrainConfig, run_dir: Path, identity: dict, splits: Splits | None,
           teacher_cache: Callable[..., TeacherCache] | None, io_rank: int, live: Live,
           dist: distributed.Dist) -> tuple[dict, torch.nn.Module | None]:
    finished = check_run_dir(run_dir, cfg, identity, locked=True)  # another process may have finished it meanwhile
    if finished is not None:
        return finished, None
    if io_rank == 0 and run_dir.is_dir():
        files.remove_stale_temp_files(run_dir)  # of writes a killed process left unfinished
    device = distributed.setup(dist, resolve_device(cfg.device))
    seed_everything(cfg.seed)
    if splits is None:
        splits = load_splits(cfg.dataset, data=live.data.get(cfg.dataset.name))
    student = build_student(cfg, splits.info, live)
    teacher = load_teacher(cfg.teacher, splits.info, device, live) if cfg.teacher else None
    method = build_method(live.methods.get(cfg.method.name, cfg.method.name), cfg.method.params, student, teacher)
    if teacher is not None:  # an inference module: BatchNorm folded, the layers the method reads kept by name
        method.replace_teacher(fold_batchnorm(teacher, keep={n.partition(":")[0] for n in method.teacher_layers()}))
    train_loader = make_loader(splits.train, splits.info, cfg.dataset, train=True, device=device, seed=cfg.seed)
    eval_loaders = {split: make_loader(getattr(splits, split), splits.info, cfg.dataset, train=False, device=device)
                    for split in ("val", "test")}
    _prepare(method, train_loader, splits, device, cfg, teacher)
    distributed.shard(dist, train_loader, *eval_loaders.values())
    io = RunIO(run_dir, rank=io_rank, progress=cfg.progress and not os.environ.get("KDLAB_NO_PROGRESS"))
    provider = _teacher_outputs(teacher_cache, method, train_loader, io) if teacher is not None else None
    scale = distributed.batch_record(dist, train_loader.batch_size, cfg.optim)
    options = _write_run_files(cfg, io, splits, device, identity, dist, scale)
    io.log(f"training {run_dir.name}: {cfg.model.name} with {cfg.method.name} on {cfg.dataset.name} "
           f"({len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test) on {device}"
           f"{' bf16' if options.bf16 else ''}")
    result = Trainer(method, train_loader, eval_loaders, options, io, teacher_cache=provider).fit()
    if provider is not None:
        provider.flush()
    io.write_checksums()
    io.write_json(io.dir.result, result)
    io.dir.failure.unlink(missing_ok=True)  # a retried run that now finished
    return result, method


def _teacher_outputs(teacher_cache, method, train_loader, io: RunIO):
    """The shared teacher-logit provider for this run, when the method reads the teacher's logits only."""
    if teacher_cache is None or not method.uses_teacher_logits_only():
        return None
    if train_loader.stream_key is None:
        io.log("teacher outputs are not shared for this run: its data's views are the Dataset's own, not a pure "
               "function of (seed, epoch), so the teacher runs live")
        return None
    return teacher_cache(train_loader, method.teacher)  # the run's teacher: loaded and folded once


def _write_run_files(cfg: TrainConfig, io: RunIO, splits: Splits, device: torch.device, identity: dict,
                     dist: distributed.Dist, scale: dict) -> EngineOptions:
    """config.yaml, identity.json and meta.json; returns the engine options (with the weights' metadata)."""
    bf16 = use_bf16(cfg.precision, device)
    allocator = tune_cpu_allocator() if device.type == "cpu" else None
    imports = saved_imports(cfg)
    io.write_json(io.dir.meta, {**environment(), "data_fingerprint": splits.fingerprint, "device": str(device),
                                "bf16": bf16, "cpu_allocator": allocator, "imports": identity["plugins"], **scale})
    io.write_json(io.dir.identity, identity)
    if io.is_main:
        files.write_text(io.dir.config, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    meta = model_meta(cfg.model.name, cfg.model.kwargs, splits.info, to_dict(cfg.dataset), imports=imports,
                      precision="bf16" if bf16 else "fp32")
    optim = replace(cfg.optim, lr=scale["lr_effective"])  # optim.lr_scaling applied
    return EngineOptions(epochs=cfg.epochs, optim=optim, device=device, bf16=bf16,
                         channels_last=cfg.channels_last, compile=cfg.compile,
                         eval_test_every_epoch=cfg.eval_test_every_epoch, model_meta=meta, threads=cfg.threads,
                         dist=dist, scale=scale)


def _prepare(method, train_loader, splits: Splits, device: torch.device, cfg: TrainConfig, teacher=None) -> None:
    """Check that the student (and teacher) take the data's images, then let a method size its extra modules
    (adapters, heads, banks) from one real batch, before the optimizer exists."""
    train_loader.set_epoch(0)
    batch = next(iter(train_loader))
    method.to(device)
    check_forward(method.students()["student"], batch.images, f"model {cfg.model.name}")
    if teacher is not None:
        check_forward(teacher, batch.images, f"teacher {cfg.teacher}")
    method.prepare(batch.images[:2], num_samples=len(splits.train), num_classes=splits.info.num_classes)


def evaluate_checkpoint(path: str, overrides: dict | None = None, device_name: str = "auto") -> dict:
    """Evaluate a saved student (a run directory or a ``.safetensors`` file) on its dataset's val and test splits, as
    the run did: the same data settings (subset, validation split) and precision, unless ``overrides`` say otherwise."""
    device = resolve_device(device_name)
    _check_saved(Path(path))
    model, meta = load_model(path, device)
    data_cfg = from_dict(DataConfig, {**meta.get("dataset", {}), **(overrides or {})}, prefix="dataset.")
    splits = load_splits(data_cfg)
    _check_fits(meta, splits.info, path)
    probe = make_loader(splits.test if len(splits.test) else splits.val, splits.info, data_cfg, train=False,
                        device=device)
    if probe.num_samples:
        check_forward(model, next(iter(probe)).images, str(path))
    bf16 = meta.get("precision") == "bf16" and use_bf16("auto", device)
    result: dict = {"epochs": meta.get("epoch"), "run_dir": str(Path(path).parent if Path(path).is_file() else path),
                    "model": meta.get("model"), "precision": "bf16" if bf16 else "fp32"}
    return {**result, **_evaluate_splits(model, splits, data_cfg, device, bf16)}


def _check_saved(path: Path) -> None:
    """A run directory, or a weights file of one, whose checksum (recorded when the run finished) no longer matches is
    refused (see :meth:`RunDir.check_finished`)."""
    run = RunDir(path if path.is_dir() else path.parent)
    if path.is_dir() or run.checksums.is_file():
        run.check_finished(None if path.is_dir() else path)


def evaluate_module(model: torch.nn.Module, data_cfg: DataConfig, live: Live, device_name: str = "auto",
                    precision: str = "auto") -> dict:
    """Val and test metrics of a module on the data ``data_cfg`` names (``live`` holds Dataset objects)."""
    device = resolve_device(device_name)
    splits = load_splits(data_cfg, data=live.data.get(data_cfg.name))
    bf16 = use_bf16(precision, device)
    model = model.to(device).eval()
    return {"model": type(model).__name__, "precision": "bf16" if bf16 else "fp32",
            **_evaluate_splits(model, splits, data_cfg, device, bf16)}


def _check_fits(meta: dict, info, path) -> None:
    if meta.get("in_channels") != info.in_channels or meta.get("num_classes") != info.num_classes:
        raise ConfigError(f"{path} takes {meta.get('in_channels')}-channel images of {meta.get('num_classes')} "
                          f"classes; this data has {info.in_channels} channel(s) and {info.num_classes} classes "
                          f"(dataset.channels=... repeats grey images)")


def _evaluate_splits(model, splits: Splits, data_cfg: DataConfig, device: torch.device, bf16: bool) -> dict:
    from kdlab.engine.evaluate import evaluate

    result: dict = {}
    for split in ("val", "test"):
        loader = make_loader(getattr(splits, split), splits.info, data_cfg, train=False, device=device)
        if loader.num_samples:
            metrics = evaluate(model, loader, device, bf16)
            result.update({f"{split}_{k}": v for k, v in metrics.items() if k != "n"})
    return result
