"""Experiment files and the plan of runs they expand to.

An experiment names a dataset, teachers, students, methods, seeds and the teacher's and students' schedules::

    name: fmnist-demo
    dataset: {name: fashion_mnist}
    seeds: [0, 1, 2]
    teachers: [{name: resnet20}]
    students: [{name: cnn_small}, {name: resnet18, label: resnet18-pretrained, pretrained: r18.safetensors}]
    methods: [kd, {name: fitnets, hint_weight: 100}, at, dml, byot]
    teacher_schedule: {epochs: 10, optim: {lr: 0.1}}
    student_schedule: {epochs: 5}

It expands to one teacher run per teacher (trained once, with ``teacher_seed``), one baseline (``ce``) per student
and seed, and one run per teacher x student x method x seed (methods without a teacher, such as ``dml`` and
``byot``, run once per student and seed). Each run is keyed by a hash of everything that determines its result: its
resolved config (minus where it is written and how it is displayed), its teacher's key and the data fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Literal, Optional

from kdlab.config import (DataConfig, MethodConfig, ModelConfig, OptimConfig, TrainConfig, apply_overrides, from_dict,
                          load_yaml, to_dict)
from kdlab.errors import ConfigError
from kdlab.methods.factory import method_class
from kdlab.plugins import import_modules
from kdlab.report.manifest import ManifestRun
from kdlab.rundir import RunDir, weights_file
from kdlab.runner.live import Live, plugin_identity


@dataclass
class Schedule:
    epochs: int = 10
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: Optional[int] = None  # overrides dataset.batch_size for these runs


@dataclass
class ModelEntry:
    """A teacher or student: a registry model, optionally pretrained, with a display label."""

    __extra__ = "kwargs"

    name: str = "resnet20"
    label: Optional[str] = None  # default: the model name (labels must be unique)
    pretrained: Optional[str] = None  # initialization from a local weights file ("pretrained vs scratch")
    checkpoint: Optional[str] = None  # teachers only: an already trained kdlab checkpoint, used as is
    kwargs: dict = field(default_factory=dict)

    @property
    def display(self) -> str:
        return self.label or self.name


@dataclass
class MethodEntry:
    __extra__ = "params"

    name: str = "kd"
    label: Optional[str] = None  # default: the method name; use labels to compare settings of one method
    params: dict = field(default_factory=dict)

    @property
    def display(self) -> str:
        return self.label or self.name


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    out_dir: str = "experiments"  # the experiment lives in out_dir/name
    dataset: DataConfig = field(default_factory=DataConfig)
    teachers: list[ModelEntry] = field(default_factory=list)
    students: list[ModelEntry] = field(default_factory=list)
    methods: list[MethodEntry] = field(default_factory=list)  # the ce baseline is always added
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    teacher_seed: int = 0
    teacher_schedule: Schedule = field(default_factory=Schedule)
    student_schedule: Schedule = field(default_factory=Schedule)
    imports: list[str] = field(default_factory=list)  # plug-in modules imported before any name is resolved
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool = True
    compile: bool = False
    progress: bool = True
    eval_test_every_epoch: bool = True  # False: test only at the end (curves then show the val split only)
    share_teacher_outputs: bool = True  # compute a teacher's logits once per seed's data stream, reuse them
    keep_teacher_cache: bool = False  # keep the cached logits on disk after a seed's runs are done

    @property
    def directory(self) -> Path:
        return Path(self.out_dir) / self.name


@dataclass
class RunSpec:
    """One run of the plan."""

    role: Literal["teacher", "baseline", "student"]
    student: str  # label of this run's model (the teacher's label for a teacher run)
    method: str  # method label ("ce" for teachers and baselines)
    seed: int
    cfg: TrainConfig
    key: str = ""
    teacher: Optional[str] = None  # label of the teacher distilled from
    teacher_run: Optional["RunSpec"] = None
    given_checkpoint: Optional[str] = None  # a teacher supplied as a finished checkpoint

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.out_dir) / str(self.cfg.name)

    @property
    def files(self) -> RunDir:
        return RunDir(self.run_dir)

    @property
    def checkpoint(self) -> str:
        return self.given_checkpoint or str(self.files.model)

    def manifest_run(self) -> ManifestRun:
        given = Path(self.given_checkpoint) if self.given_checkpoint else None
        return ManifestRun(key=self.key, role=self.role, teacher=self.teacher, student=self.student,
                           method=self.method, seed=self.seed, run_dir=self.run_dir, model=self.cfg.model.name,
                           path=str(given or self.run_dir), checkpoint=given)


def _check_labels(entries: list, what: str) -> None:
    labels = [e.display for e in entries]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ConfigError(f"{what}: label {dupes[0]!r} is used twice; give each entry a distinct label")


def validate(exp: ExperimentConfig, live: Live | None = None) -> None:
    """Plug-ins, names, hyperparameters and labels, checked before any data is read."""
    import_modules(exp.imports)
    if not exp.students:
        raise ConfigError("experiment: 'students' is empty")
    for what in ("teachers", "students", "methods"):
        _check_labels(getattr(exp, what), what)
    if not exp.seeds:
        raise ConfigError("experiment: 'seeds' is empty")
    if not exp.teachers:
        needy = [m.display for m in exp.methods if _needs_teacher(m.name, live or Live())]
        if needy:
            raise ConfigError(f"method {needy[0]!r} needs a teacher; the experiment lists none under 'teachers'")
    expand(exp, data_fingerprint="validate", live=live)  # resolves (and so checks) every run's config


def _needs_teacher(method: str, live: Live) -> bool:
    if method in live.methods:
        return method_class(live.methods[method]).needs_teacher
    return any(method_class(part).needs_teacher for part in method.split("+"))


def _train_config(exp: ExperimentConfig, model: ModelEntry, schedule: Schedule, method: MethodEntry | None,
                  seed: int) -> TrainConfig:
    dataset = replace(exp.dataset, batch_size=schedule.batch_size or exp.dataset.batch_size)
    return TrainConfig(
        model=ModelConfig(name=model.name, pretrained=model.pretrained, kwargs=dict(model.kwargs)),
        dataset=dataset, optim=schedule.optim,
        method=MethodConfig(name=method.name, params=dict(method.params)) if method else MethodConfig(),
        epochs=schedule.epochs, seed=seed, imports=list(exp.imports), device=exp.device, precision=exp.precision,
        channels_last=exp.channels_last, compile=exp.compile, out_dir=str(exp.directory / "runs"),
        progress=exp.progress, eval_test_every_epoch=exp.eval_test_every_epoch)


def run_key(cfg: TrainConfig, teacher_key: str | None, data_fingerprint: str, plugins: dict | None = None) -> str:
    """Hash of what determines a run's result (its resolved config, its teacher's key, the data and the source of the
    plug-in code it uses): not where it is written, how it is shown, or which device runs it."""
    payload = to_dict(cfg)
    for volatile in ("out_dir", "name", "progress", "device", "teacher", "imports"):
        payload.pop(volatile)
    identity = {"cfg": payload, "teacher": teacher_key, "data": data_fingerprint}
    if plugins:
        identity["plugins"] = plugins
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def _keyed(spec: RunSpec, data_fingerprint: str, live: Live) -> RunSpec:
    from kdlab.runner.single import resolve_config

    spec.cfg = resolve_config(spec.cfg, live)
    teacher_key = spec.teacher_run.key if spec.teacher_run else None
    names = [spec.cfg.model.name, spec.cfg.dataset.name, *spec.cfg.method.name.split("+")]
    spec.key = run_key(spec.cfg, teacher_key, data_fingerprint, plugin_identity(spec.cfg.imports, names, live))
    parts = [spec.role, spec.student, spec.method] + ([f"from-{spec.teacher}"] if spec.teacher else [])
    safe = "-".join(parts).replace("/", "_").replace(":", "_").replace("+", "_")
    spec.cfg.name = f"{safe}-s{spec.seed}-{spec.key[:8]}"
    if spec.teacher_run is not None:
        spec.cfg.teacher = spec.teacher_run.checkpoint
    return spec


def _teacher_spec(exp: ExperimentConfig, entry: ModelEntry, fingerprint: str, live: Live) -> RunSpec:
    cfg = _train_config(exp, entry, exp.teacher_schedule, None, exp.teacher_seed)
    given = str(weights_file(entry.checkpoint)) if entry.checkpoint else None  # as on the command line
    spec = RunSpec("teacher", entry.display, "ce", exp.teacher_seed, cfg, given_checkpoint=given)
    if given:
        path = Path(given)
        if not path.is_file() and fingerprint != "validate":
            raise ConfigError(f"teacher {entry.display!r}: checkpoint not found: {path}")
        spec.key = hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else "given"
        return spec
    return _keyed(spec, fingerprint, live)


def expand(exp: ExperimentConfig, data_fingerprint: str, live: Live | None = None) -> list[RunSpec]:
    """All runs, in the order they should run: teachers, then per seed the baselines and the distilled students."""
    live = live or Live()
    teachers = [_teacher_spec(exp, t, data_fingerprint, live) for t in exp.teachers]
    plan = list(teachers)
    methods = [m for m in exp.methods if m.name != "ce"]
    for seed in exp.seeds:
        for student in exp.students:
            base = _train_config(exp, student, exp.student_schedule, None, seed)
            plan.append(_keyed(RunSpec("baseline", student.display, "ce", seed, base), data_fingerprint, live))
            for method in methods:
                sources = teachers if _needs_teacher(method.name, live) else [None]
                for teacher in sources:
                    cfg = _train_config(exp, student, exp.student_schedule, method, seed)
                    spec = RunSpec("student", student.display, method.display, seed, cfg,
                                   teacher=teacher.student if teacher else None, teacher_run=teacher)
                    plan.append(_keyed(spec, data_fingerprint, live))
    return plan


DEFAULT_EXPERIMENT = "fmnist_demo.yaml"


def default_experiment_path() -> Path:
    """The embedded default experiment (``kdlab run`` without a file, ``make demo``)."""
    return Path(str(resources.files("kdlab") / "configs" / DEFAULT_EXPERIMENT))


def load_experiment(tree: dict) -> ExperimentConfig:
    return from_dict(ExperimentConfig, tree)


def load_experiment_file(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """An experiment from a YAML file (default: the embedded one) and ``key=value`` overrides."""
    tree = load_yaml(path or default_experiment_path())
    return load_experiment(apply_overrides(tree, list(overrides or [])))
