"""One training run from a ``TrainConfig``: data, models, method, engine, run directory.

Train-or-load: a run directory that already holds a finished run with the same identity (:mod:`kdlab.runs.identity`)
returns its result; an interrupted one resumes from its last checkpoint; one that holds another is refused.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import yaml

import kdlab
from kdlab import files
from kdlab.config import TrainConfig, to_dict
from kdlab.console import log
from kdlab.data import DatasetInfo, Splits, load_splits, make_loader
from kdlab.engine import distributed
from kdlab.engine.device import resolve_device, seed_everything, use_bf16
from kdlab.engine.host import tune_cpu_allocator
from kdlab.engine.runio import RunIO
from kdlab.engine.trainer import EngineOptions, TeacherCache, Trainer
from kdlab.errors import ConfigError
from kdlab.methods import build_method
from kdlab.models import create_model
from kdlab.models.probe import check_forward
from kdlab.models.saved import load_model, model_meta
from kdlab.models.weights import load_pretrained
from kdlab.runs.identity import check_run_dir, resolve_config, run_dir_for, run_identity, saved_imports
from kdlab.rundir import RunDir
from kdlab.runs.ensemble import EnsembleTeacher, check_teachers, fold_teacher, teacher_names
from kdlab.runs.evaluate import check_saved
from kdlab.runs.live import Live
from kdlab.runs.views import InputView, data_view, declared_view, give_view, recorded_view


def environment() -> dict:
    """What produced a run: versions, git revision, hardware."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(kdlab.__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        rev = None
    return {"kdlab": kdlab.__version__, "git_revision": rev, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
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


def load_teacher(name: str, info: DatasetInfo, device: torch.device, live: Live,
                 imports: Sequence[str] = ()) -> tuple[torch.nn.Module, InputView | None]:
    """The frozen teacher (a live module, or a kdlab checkpoint: a run directory or its model.safetensors) and the
    input it was trained on, where known (see :mod:`kdlab.runs.views`). A checkpoint's weights are verified first,
    and the plug-in code it names is imported only when ``imports`` (the user's) name it."""
    if name in live.teachers:
        teacher = live.teachers[name].to(device).eval()
        return teacher, declared_view(teacher)
    check_saved(Path(name))
    teacher, meta = load_model(name, device, factories=live.models, allowed_imports=imports)
    view = recorded_view(meta, info)
    if meta.get("num_classes") != info.num_classes or (view is None and meta.get("in_channels") != info.in_channels):
        raise ConfigError(f"teacher {name} was trained for {meta.get('num_classes')} classes and "
                          f"{meta.get('in_channels')} channels; this dataset has {info.num_classes} and "
                          f"{info.in_channels}")
    return teacher, view


def load_teachers(cfg: TrainConfig, info: DatasetInfo, device: torch.device,
                  live: Live) -> tuple[torch.nn.Module | None, InputView | None]:
    """The run's frozen teacher and its input view (:func:`load_teacher`); with a list of teachers, an
    :class:`~kdlab.runs.ensemble.EnsembleTeacher` of them, each keeping its own view (the ensemble's is None)."""
    names = teacher_names(cfg.teacher)
    if not names:
        return None, None
    trusted = [*cfg.imports, *live.trusted]  # the plug-ins the user (or the experiment's own file) named
    if len(names) == 1:
        return load_teacher(names[0], info, device, live, trusted)
    check_teachers(cfg.teacher, cfg.teacher_weights, cfg.teacher_mode)
    loaded = [load_teacher(name, info, device, live, trusted) for name in names]
    return EnsembleTeacher([m for m, _ in loaded], cfg.teacher_weights, cfg.teacher_mode, [v for _, v in loaded],
                           [teacher_label(name) for name in names]), None


def teacher_label(name: str) -> str:
    """How a teacher is named in logs: a run directory's name (``runs/t1/model.safetensors`` -> ``t1``)."""
    path = Path(name)
    return path.parent.name if path.name == "model.safetensors" and path.parent.name else path.name or name


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
    if splits is None:  # its fingerprint is part of the run's identity: a changed dataset is another run
        splits = load_splits(cfg.dataset, data=live.data.get(cfg.dataset.name))
    identity = run_identity(cfg, live, splits.fingerprint)
    run_dir = run_dir_for(cfg, identity)
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
    RunDir(run_dir).check_ours()  # never a lock (or anything) in a folder kdlab did not make
    created = not run_dir.exists()
    try:
        with files.directory_lock(run_dir, "training this run"):
            yield
    finally:
        if created and run_dir.is_dir() and [p.name for p in run_dir.iterdir()] == [".lock"]:
            shutil.rmtree(run_dir, ignore_errors=True)


def _train(cfg: TrainConfig, run_dir: Path, identity: dict, splits: Splits,
           teacher_cache: Callable[..., TeacherCache] | None, io_rank: int, live: Live,
           dist: distributed.Dist) -> tuple[dict, torch.nn.Module | None]:
    finished = check_run_dir(run_dir, cfg, identity, locked=True)  # another process may have finished it meanwhile
    if finished is not None:
        return finished, None
    if io_rank == 0 and run_dir.is_dir():
        files.remove_stale_temp_files(run_dir)  # of writes a killed process left unfinished
    device = distributed.setup(dist, resolve_device(cfg.device))
    seed_everything(cfg.seed)
    student = build_student(cfg, splits.info, live)
    teacher, teacher_view = load_teachers(cfg, splits.info, device, live)
    method = build_method(live.methods.get(cfg.method.name, cfg.method.name), cfg.method.params, student, teacher)
    if teacher is not None:  # an inference module: BatchNorm folded, the layers the method reads kept by name
        method.replace_teacher(fold_teacher(teacher, keep={n.partition(":")[0] for n in method.teacher_layers()}))
    train_loader = make_loader(splits.train, splits.info, cfg.dataset, train=True, device=device, seed=cfg.seed)
    eval_loaders = {split: make_loader(getattr(splits, split), splits.info, cfg.dataset, train=False, device=device)
                    for split in ("val", "test")}
    view = _prepare(method, train_loader, splits, device, cfg, teacher_view, cfg.dataset.name in live.data)
    distributed.shard(dist, train_loader, *eval_loaders.values())
    io = RunIO(run_dir, rank=io_rank, progress=cfg.progress and not os.environ.get("KDLAB_NO_PROGRESS"))
    provider = _teacher_outputs(teacher_cache, method, train_loader, io) if teacher is not None else None
    scale = distributed.batch_record(dist, train_loader.batch_size, cfg.optim)
    options = _write_run_files(cfg, io, splits, device, identity, dist, scale, view)
    io.log(f"training {run_dir.name}: {cfg.model.name} with {cfg.method.name} on {cfg.dataset.name} "
           f"({len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test) on {device}"
           f"{' bf16' if options.bf16 else ''}")
    if cfg.dataset.skip_bad_files:  # those found so far: at listing, and decoding a split into memory
        io.update_json(io.dir.meta, {"skipped_files": skipped_files(train_loader, *eval_loaders.values())})
    result = Trainer(method, train_loader, eval_loaders, options, io, teacher_cache=provider).fit()
    if cfg.dataset.skip_bad_files:  # and those the streamed epochs met
        result["skipped_files"] = skipped_files(train_loader, *eval_loaders.values())
        io.update_json(io.dir.meta, {"skipped_files": result["skipped_files"]})
    if provider is not None:
        provider.flush()
    io.write_result(result)
    io.dir.failure.unlink(missing_ok=True)  # a retried run that now finished
    return result, method


def skipped_files(*loaders) -> int:
    """Bad image files the run's loaders left out (``dataset.skip_bad_files``), each counted once: the validation
    split is carved from the training folder, so the loaders' file paths are united rather than their counts added
    (a loader over a user's Dataset has none)."""
    paths: set[str] = set()
    for loader in loaders:
        if loader is not None:
            paths.update(getattr(loader.split, "skipped", ()), getattr(loader, "bad_files", {}))
    return len(paths)


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
                     dist: distributed.Dist, scale: dict, view: InputView) -> EngineOptions:
    """config.yaml, identity.json and meta.json; returns the engine options (with the weights' metadata: the input
    the student takes, so that a run distilling from it later gives it its own view)."""
    bf16 = use_bf16(cfg.precision, device)
    allocator = tune_cpu_allocator() if device.type == "cpu" else None
    imports = saved_imports(cfg)
    io.write_json(io.dir.meta, {**environment(), "data_fingerprint": splits.fingerprint, "device": str(device),
                                "bf16": bf16, "cpu_allocator": allocator, "imports": identity["plugins"],
                                "input": view.as_dict(), **scale})
    io.write_json(io.dir.identity, identity)
    if io.is_main:
        files.write_text(io.dir.config, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    meta = {**model_meta(cfg.model.name, cfg.model.kwargs, splits.info, to_dict(cfg.dataset), imports=imports,
                         precision="bf16" if bf16 else "fp32"), "input": view.as_dict()}
    optim = replace(cfg.optim, lr=scale["lr_effective"])  # optim.lr_scaling applied
    return EngineOptions(epochs=cfg.epochs, optim=optim, device=device, bf16=bf16,
                         channels_last=cfg.channels_last, compile=cfg.compile,
                         eval_test_every_epoch=cfg.eval_test_every_epoch, model_meta=meta, threads=cfg.threads,
                         dist=dist, scale=scale, checkpoint_every_s=cfg.checkpoint_every_s)


def _prepare(method, train_loader, splits: Splits, device: torch.device, cfg: TrainConfig,
             teacher_view: InputView | None, own_objects: bool) -> InputView:
    """Give the teacher its own view of the data where it was trained on another input, check that the student and
    teacher take the data's images, then let a method size its extra modules (adapters, heads, banks) from one real
    batch, before the optimizer exists. Returns the view the data's batches have (the student's input)."""
    train_loader.set_epoch(0)
    batch = next(iter(train_loader))
    method.to(device)
    view = data_view(batch.images, splits.info, cfg.dataset, own_objects)
    num_classes = splits.info.num_classes
    check_forward(method.students()["student"], batch.images, f"model {cfg.model.name}", num_classes)
    if method.teacher is not None:
        who = f"teacher {cfg.teacher}"
        lines: list[str | None]
        if isinstance(method.teacher, EnsembleTeacher):  # each member its own view
            who = f"teacher {method.teacher.describe()}"
            lines = [who, *method.teacher.give_views(view, batch.images)]
        else:
            lines = [give_view(method.teacher, view, teacher_view, batch.images, who)]
        for line in filter(None, lines):
            log.info(line)
        check_forward(method.teacher, batch.images, who, num_classes)
    method.prepare(batch.images[:2], num_samples=len(splits.train), num_classes=splits.info.num_classes)
    return view
