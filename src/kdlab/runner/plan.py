"""The plan of runs an experiment (:mod:`kdlab.runner.experiment_config`) expands to, and their keys.

One teacher run per teacher (trained once, with ``teacher_seed``); for TAKD chains, one assistant run per assistant and
teacher (distilled from the teacher with the assistant's ``method``, default ``kd``, with ``teacher_seed``); then per
seed one baseline (``ce``) per student and one run per teacher x student x method (a method with ``via: <assistant>``
distils from that assistant instead; methods without a teacher, such as ``dml`` and ``byot``, run once per student).
Each run is keyed by a hash of everything that determines its result: its resolved config (minus where it is written
and how it is displayed), its teacher's key, the data fingerprint and the source of the plug-in code it uses.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Optional

from kdlab.config import MethodConfig, ModelConfig, TrainConfig, check_plain_name, to_dict
from kdlab.errors import ConfigError
from kdlab.methods.factory import method_class
from kdlab.plugins import import_modules
from kdlab.report.manifest import ManifestRun
from kdlab.rundir import RunDir, weights_file
from kdlab.runner.experiment_config import (ExperimentConfig, MethodEntry, ModelEntry, Schedule,  # noqa: F401
                                           default_experiment_path, load_experiment, load_experiment_file)
from kdlab.runner.live import Live, plugin_identity
from kdlab.runner.sweep import method_entries


@dataclass
class RunSpec:
    """One run of the plan."""

    role: Literal["teacher", "assistant", "baseline", "student"]
    student: str  # label of this run's model (the teacher's label for a teacher run)
    method: str  # method label ("ce" for teachers and baselines)
    seed: int
    cfg: TrainConfig
    key: str = ""
    teacher: Optional[str] = None  # label of the teacher distilled from
    teacher_run: Optional["RunSpec"] = None
    given_checkpoint: Optional[str] = None  # a teacher supplied as a finished checkpoint
    labels: dict = field(default_factory=dict)  # swept hyperparameters of a sweep point (kdlab.runner.sweep)

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
                           path=str(given or self.run_dir), checkpoint=given, labels=dict(self.labels))


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
    if len(set(exp.seeds)) != len(exp.seeds):
        repeated = next(s for s in exp.seeds if exp.seeds.count(s) > 1)
        raise ConfigError(f"config key 'seeds': seed {repeated} is listed twice; a repeated seed would count one "
                          f"run twice in the mean and std")
    check_plain_name(exp.name, "name")
    if not exp.teachers:
        needy = [m.display for m in exp.methods if _needs_teacher(m.name, live or Live())]
        if needy:
            raise ConfigError(f"method {needy[0]!r} needs a teacher; the experiment lists none under 'teachers'")
        if exp.assistants:
            raise ConfigError("assistants are distilled from a teacher; the experiment lists none under 'teachers'")
    _check_labels(exp.assistants, "assistants")
    labels = {a.display for a in exp.assistants}
    for method in exp.methods:
        if method.via is not None and method.via not in labels:
            raise ConfigError(f"method {method.display!r}: via {method.via!r} names no assistant "
                              f"(assistants: {', '.join(sorted(labels)) or 'none'})")
    expand(exp, data_fingerprint="validate", live=live)  # resolves (and so checks) every run's config


def _needs_teacher(method: str, live: Live) -> bool:
    if method in live.methods:
        return method_class(live.methods[method]).needs_teacher
    return any(method_class(part).needs_teacher for part in method.split("+"))


def _train_config(exp: ExperimentConfig, model: ModelEntry, schedule: Schedule, method: MethodEntry | None,
                  seed: int, fixed_views: int = 0) -> TrainConfig:
    dataset = replace(exp.dataset, batch_size=schedule.batch_size or exp.dataset.batch_size,
                      fixed_views=fixed_views or exp.dataset.fixed_views)
    return TrainConfig(
        model=ModelConfig(name=model.name, pretrained=model.pretrained, kwargs=dict(model.kwargs)),
        dataset=dataset, optim=schedule.optim,
        method=MethodConfig(name=method.name, params=dict(method.params)) if method else MethodConfig(),
        epochs=schedule.epochs, seed=seed, imports=list(exp.imports), device=exp.device, threads=exp.threads,
        precision=exp.precision,
        channels_last=exp.channels_last, compile=exp.compile, out_dir=str(exp.directory / "runs"),
        progress=exp.progress, eval_test_every_epoch=exp.eval_test_every_epoch)


def run_key(cfg: TrainConfig, teacher_key: str | None, data_fingerprint: str, plugins: dict | None = None) -> str:
    """Hash of what determines a run's result (its resolved config, its teacher's key, the data and the source of the
    plug-in code it uses): not where it is written, how it is shown, or which device runs it."""
    payload = to_dict(cfg)
    for volatile in ("out_dir", "name", "progress", "device", "threads", "teacher", "imports"):
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


def _assistant_specs(exp: ExperimentConfig, teachers: list[RunSpec], fingerprint: str, live: Live) -> list[RunSpec]:
    """TAKD's assistants: each distilled from each teacher (with its ``method``, default kd), with ``teacher_seed``."""
    specs = []
    schedule = exp.assistant_schedule or exp.student_schedule
    for entry in exp.assistants:
        method = entry.method or MethodEntry(name="kd")
        for teacher in teachers:
            cfg = _train_config(exp, entry, schedule, method, exp.teacher_seed, exp.teacher_views)
            spec = RunSpec("assistant", entry.display, method.display, exp.teacher_seed, cfg, teacher=teacher.student,
                           teacher_run=teacher)
            specs.append(_keyed(spec, fingerprint, live))
    return specs


def expand(exp: ExperimentConfig, data_fingerprint: str, live: Live | None = None) -> list[RunSpec]:
    """All runs, in the order they should run: teachers, assistants, then per seed the baselines and the students."""
    live = live or Live()
    teachers = [_teacher_spec(exp, t, data_fingerprint, live) for t in exp.teachers]
    assistants = _assistant_specs(exp, teachers, data_fingerprint, live)
    plan = teachers + assistants
    methods = [(m, labels) for m, labels in method_entries(exp) if m.name != "ce"]
    for seed in exp.seeds:
        for student in exp.students:
            base = _train_config(exp, student, exp.student_schedule, None, seed, exp.teacher_views)
            plan.append(_keyed(RunSpec("baseline", student.display, "ce", seed, base), data_fingerprint, live))
            for method, labels in methods:
                sources: list = teachers if _needs_teacher(method.name, live) else [None]
                if method.via is not None:
                    sources = [a for a in assistants if a.student == method.via]
                for teacher in sources:
                    cfg = _train_config(exp, student, exp.student_schedule, method, seed, exp.teacher_views)
                    spec = RunSpec("student", student.display, method.display, seed, cfg,
                                   teacher=teacher.student if teacher else None, teacher_run=teacher, labels=labels)
                    plan.append(_keyed(spec, data_fingerprint, live))
    return plan
