"""The plan of runs an experiment (:mod:`kdlab.experiments.config`) expands to, and their keys.

One teacher run per teacher (trained once, with ``teacher_seed``); for TAKD chains, one assistant run per assistant and
teacher (distilled from the teacher with the assistant's ``method``, default ``kd``, with ``teacher_seed``); then per
seed one baseline (``ce``) per student and one run per teacher x student x method (a method with ``via: <assistant>``
distils from that assistant instead; methods without a teacher, such as ``dml`` and ``byot``, run once per student).
An ensemble (``ensembles: [{label: ens, teachers: [t1, t2]}]``) is one more teacher of every logits method: its
students distil from the ensemble teacher of those teacher runs (:mod:`kdlab.runs.ensemble`); its key hashes its
members' keys, mode and weights, so changing one member changes every key downstream. A feature method distils from
an ensemble only when it names it (``via: ens``), with its teacher layers named per member (``[t0.layer3]``).
Each run is keyed by a hash of everything that determines its result: its resolved config (minus where it is written
and how it is displayed), its teacher's key, the data fingerprint and the source of the plug-in code it uses.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from kdlab.config import MethodConfig, ModelConfig, TrainConfig, check_plain_name
from kdlab.errors import ConfigError
from kdlab.expdir import ExperimentDir, PlannedRun
from kdlab.experiments.config import EnsembleEntry, ExperimentConfig, MethodEntry, ModelEntry, Schedule
from kdlab.experiments.sweep import method_entries
from kdlab.methods.base import Method
from kdlab.methods.factory import method_class
from kdlab.plugins import import_modules
from kdlab.rundir import weights_file
from kdlab.runs.ensemble import check_teachers
from kdlab.runs.identity import resolve_config, run_key
from kdlab.runs.live import Live, plugin_identity


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
    _check_ensembles(exp)
    labels = {a.display for a in exp.assistants} | {e.display for e in exp.ensembles}
    for method in exp.methods:
        if method.via is not None and method.via not in labels:
            raise ConfigError(f"method {method.display!r}: via {method.via!r} names no assistant or ensemble "
                              f"(assistants and ensembles: {', '.join(sorted(labels)) or 'none'})")
    expand(exp, data_fingerprint="validate", live=live)  # resolves (and so checks) every run's config


def _check_ensembles(exp: ExperimentConfig) -> None:
    """Each ensemble names two or more of the teachers, once each, with weights that fit; its label is its own."""
    _check_labels(exp.ensembles, "ensembles")
    teachers = {t.display for t in exp.teachers}
    taken = teachers | {a.display for a in exp.assistants}
    for i, entry in enumerate(exp.ensembles):
        key = f"ensembles[{i}]"
        if len(entry.teachers) < 2 or len(set(entry.teachers)) != len(entry.teachers):
            raise ConfigError(f"config key '{key}.teachers': an ensemble names two or more distinct teachers, got "
                              f"{entry.teachers}")
        unknown = [t for t in entry.teachers if t not in teachers]
        if unknown:
            raise ConfigError(f"config key '{key}.teachers': {unknown[0]!r} is no teacher's label (teachers: "
                              f"{', '.join(sorted(teachers)) or 'none'})")
        if entry.display in taken:
            raise ConfigError(f"config key '{key}.label': {entry.display!r} is also a teacher's or an assistant's "
                              f"label; give the ensemble its own")
        try:
            check_teachers(list(entry.teachers), entry.weights, entry.mode)
        except ConfigError as exc:
            raise ConfigError(f"{key}: {exc}") from None


def _needs_teacher(method: str, live: Live) -> bool:
    if method in live.methods:
        return method_class(live.methods[method]).needs_teacher
    return any(method_class(part).needs_teacher for part in method.split("+"))


def _reads_teacher_layers(method: str, live: Live) -> bool:
    """Whether a method (or a part of it) declares teacher layers: judged from its classes, before any model exists."""
    parts = [method_class(live.methods[method])] if method in live.methods else \
        [method_class(part) for part in method.split("+")]
    return any(part.teacher_layers is not Method.teacher_layers for part in parts)


@dataclass
class EnsembleRun(PlannedRun):
    """An ensemble of teacher runs, as the teacher of the runs distilled from it (``teacher_run``); not a run of the
    plan itself: it trains nothing, its members do. ``student`` is its label, listing the members."""

    members: list[PlannedRun] = field(default_factory=list, repr=False)
    mode: str = "mean"
    weights: list[float] | None = None


def teacher_sources(spec: PlannedRun) -> list[PlannedRun]:
    """The runs ``spec`` distils from: its teacher run, or every member of its ensemble teacher ([] without one).
    What a scheduler waits for before ``spec`` may start, and whose failure fails it."""
    source = spec.teacher_run
    if source is None:
        return []
    return list(source.members) if isinstance(source, EnsembleRun) else [source]


def _ensemble_spec(exp: ExperimentConfig, entry: EnsembleEntry, teachers: list[PlannedRun]) -> EnsembleRun:
    """The ensemble's stand-in teacher run, keyed by its members' keys, its mode and weights."""
    by_label = {t.student: t for t in teachers}
    members = [by_label[label] for label in entry.teachers]
    weights = list(entry.weights) if entry.weights is not None else None
    payload = {"ensemble": [m.key for m in members], "mode": entry.mode, "weights": weights}
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]
    label = entry.label + f"({'+'.join(entry.teachers)})" if entry.label else entry.display
    return EnsembleRun(key=key, role="teacher", student=label, method="ensemble", seed=exp.teacher_seed,
                       run_dir=exp.directory / "runs", model="ensemble", members=members, mode=entry.mode,
                       weights=weights)


def _sources(method: MethodEntry, teachers: list[PlannedRun], assistants: list[PlannedRun],
             ensembles: dict[str, EnsembleRun], live: Live) -> list:
    """What a method entry distils each student from: its ``via`` (an assistant or an ensemble); else every teacher
    and, for a method that reads no teacher layer, every ensemble; [None] for a method without a teacher."""
    if not _needs_teacher(method.name, live):
        return [None]
    if method.via is not None:
        if method.via in ensembles:
            return [ensembles[method.via]]
        return [a for a in assistants if a.student == method.via]
    if _reads_teacher_layers(method.name, live):
        return list(teachers)
    return [*teachers, *ensembles.values()]


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
        progress=exp.progress, eval_test_every_epoch=exp.eval_test_every_epoch, tracking=exp.tracking,
        tracking_uri=exp.tracking_uri)


def _planned(role: str, student: str, method: str, seed: int, cfg: TrainConfig,
             teacher_run: PlannedRun | None = None, labels: dict | None = None) -> PlannedRun:
    return PlannedRun(key="", role=role, student=student, method=method, seed=seed, run_dir=Path(cfg.out_dir),
                      model=cfg.model.name, teacher=teacher_run.student if teacher_run else None,
                      labels=dict(labels or {}), cfg=cfg, teacher_run=teacher_run)


def _keyed(spec: PlannedRun, data_fingerprint: str, live: Live) -> PlannedRun:
    """Resolve the run's config, key it by its identity and name its directory after its key."""
    cfg = spec.cfg = resolve_config(spec.config, live)
    teacher_key = spec.teacher_run.key if spec.teacher_run else None
    names = [cfg.model.name, cfg.dataset.name, *cfg.method.name.split("+")]
    spec.key = run_key(cfg, teacher_key, data_fingerprint, plugin_identity(cfg.imports, names, live))
    parts = [spec.role, spec.student, spec.method] + ([f"from-{spec.teacher}"] if spec.teacher else [])
    safe = "-".join(parts).replace("/", "_").replace(":", "_").replace("+", "_")
    cfg.name = f"{safe}-s{spec.seed}-{spec.key[:8]}"
    spec.run_dir = Path(cfg.out_dir) / cfg.name
    source = spec.teacher_run
    if isinstance(source, EnsembleRun):
        cfg.teacher = [str(member.model_path) for member in source.members]
        cfg.teacher_mode, cfg.teacher_weights = source.mode, source.weights  # type: ignore[assignment]
    elif source is not None:
        cfg.teacher = str(source.model_path)
    return spec


def _teacher_spec(exp: ExperimentConfig, entry: ModelEntry, fingerprint: str, live: Live) -> PlannedRun:
    cfg = _train_config(exp, entry, exp.teacher_schedule, None, exp.teacher_seed)
    spec = _planned("teacher", entry.display, "ce", exp.teacher_seed, cfg)
    if entry.checkpoint:
        path = weights_file(entry.checkpoint)  # as on the command line
        if not path.is_file() and fingerprint != "validate":
            raise ConfigError(f"teacher {entry.display!r}: checkpoint not found: {path}")
        spec.key = hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else "given"
        spec.given_checkpoint, spec.run_dir = path, ExperimentDir(exp.directory).given_cache(spec.key)
        return spec
    return _keyed(spec, fingerprint, live)


def _assistant_specs(exp: ExperimentConfig, teachers: list[PlannedRun], fingerprint: str,
                     live: Live) -> list[PlannedRun]:
    """TAKD's assistants: each distilled from each teacher (with its ``method``, default kd), with ``teacher_seed``."""
    specs = []
    schedule = exp.assistant_schedule or exp.student_schedule
    for entry in exp.assistants:
        method = entry.method or MethodEntry(name="kd")
        for teacher in teachers:
            cfg = _train_config(exp, entry, schedule, method, exp.teacher_seed, exp.teacher_views)
            spec = _planned("assistant", entry.display, method.display, exp.teacher_seed, cfg, teacher_run=teacher)
            specs.append(_keyed(spec, fingerprint, live))
    return specs


def expand(exp: ExperimentConfig, data_fingerprint: str, live: Live | None = None) -> list[PlannedRun]:
    """All runs, in the order they should run: teachers, assistants, then per seed the baselines and the students."""
    live = live or Live()
    teachers = [_teacher_spec(exp, t, data_fingerprint, live) for t in exp.teachers]
    assistants = _assistant_specs(exp, teachers, data_fingerprint, live)
    plan = teachers + assistants
    ensembles = {e.display: _ensemble_spec(exp, e, teachers) for e in exp.ensembles}
    methods = [(m, labels) for m, labels in method_entries(exp) if m.name != "ce"]
    for seed in exp.seeds:
        for student in exp.students:
            base = _train_config(exp, student, exp.student_schedule, None, seed, exp.teacher_views)
            plan.append(_keyed(_planned("baseline", student.display, "ce", seed, base), data_fingerprint, live))
            for method, labels in methods:
                for teacher in _sources(method, teachers, assistants, ensembles, live):
                    cfg = _train_config(exp, student, exp.student_schedule, method, seed, exp.teacher_views)
                    spec = _planned("student", student.display, method.display, seed, cfg, teacher, labels)
                    plan.append(_keyed(spec, data_fingerprint, live))
    return plan
