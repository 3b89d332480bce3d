"""The experiment directory: where each file of an experiment lives, and its manifest, the one list of its runs.

One owner for the layout, as :mod:`kdlab.rundir` is for a run: ``kdlab run`` writes through these names, the report
and the workers read through them::

    EXP/experiment.yaml     the resolved experiment config
    EXP/manifest.json       name, dataset settings, seeds, plug-ins, and one row per run (this module's format)
    EXP/summary.json        wall time, training-loop time, teacher passes of the last invocation that trained
    EXP/runs/<run>/         one run directory each (see kdlab.rundir)
    EXP/teacher_cache/      a seed's shared teacher logits, while its runs go on (``keep_teacher_cache`` keeps them)
    EXP/teacher_views/      the teacher's outputs for the fixed views (``teacher_views: K``)
    EXP/report/             the report (tables, figures, index.html); report/cache/ its per-run evaluations

A row's ``run_dir`` is relative to the experiment, so a moved or copied experiment still reports; a teacher given
as a finished checkpoint has ``checkpoint`` instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Optional

from kdlab.config import TrainConfig
from kdlab.errors import ReportError
from kdlab.files import write_text
from kdlab.rundir import RunDir

MANIFEST_FILE = "manifest.json"
ROLES = ("teacher", "assistant", "baseline", "student")


def file_safe(text: str) -> str:
    """``text`` with every character but letters, digits, ``-``, ``_`` and ``.`` replaced by ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


@dataclass(frozen=True)
class ExperimentDir:
    """The paths of an experiment directory."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / "experiment.yaml"

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST_FILE

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def runs(self) -> Path:
        return self.path / "runs"

    @property
    def report(self) -> Path:
        return self.path / "report"

    @property
    def teacher_cache(self) -> Path:
        return self.path / "teacher_cache"

    @property
    def teacher_views(self) -> Path:
        return self.path / "teacher_views"

    def given_cache(self, key: str) -> Path:
        """Where the report caches the predictions of a teacher given as a finished checkpoint."""
        return self.report / "cache" / f"given-{file_safe(key)}"


@dataclass
class PlannedRun:
    """One run of an experiment: as the plan makes it (with ``cfg``, the config it trains with, and ``teacher_run``,
    the run it distils from) or as the manifest lists it (without them: a report needs its files, not its recipe)."""

    key: str
    role: str  # one of ROLES
    student: str  # label of its model (the teacher's label for a teacher run)
    method: str  # method label ("ce" for teachers and baselines)
    seed: int
    run_dir: Path  # where its files are; for a given checkpoint, where the report caches its predictions
    model: str  # architecture name
    teacher: Optional[str] = None  # label of the teacher (or assistant) it was distilled from
    given_checkpoint: Optional[Path] = None  # a teacher supplied as a finished checkpoint (not trained here)
    labels: dict = field(default_factory=dict)  # free-form labels (e.g. swept hyperparameters), shown by the report
    cfg: Optional[TrainConfig] = field(default=None, repr=False)
    teacher_run: Optional["PlannedRun"] = field(default=None, repr=False)

    @property
    def files(self) -> RunDir:
        return RunDir(self.run_dir)

    @property
    def config(self) -> TrainConfig:
        """The config it trains with (a planned run; one read back from a manifest has none)."""
        if self.cfg is None:
            raise ReportError(f"run {self.key!r} was read from a manifest: it has no training config")
        return self.cfg

    @property
    def model_path(self) -> Path:
        """Its weights: the given checkpoint, or the run's ``model.safetensors``."""
        return self.given_checkpoint or self.files.model

    @property
    def best_path(self) -> Path | None:
        return None if self.given_checkpoint else self.files.best

    @property
    def shown_path(self) -> str:
        """Where it is, as reports name it: the given checkpoint, or ``runs/<name>`` (relative to the experiment, as
        every run directory of an experiment is ``EXP/runs/<name>``)."""
        if self.given_checkpoint:
            return str(self.given_checkpoint)
        return f"{self.run_dir.parent.name}/{self.run_dir.name}"

    def row(self, exp_dir: Path) -> dict:
        """The manifest row (paths relative to ``exp_dir``)."""
        return {"key": self.key, "role": self.role, "teacher": self.teacher, "student": self.student,
                "method": self.method, "seed": self.seed, "model": self.model,
                "run_dir": None if self.given_checkpoint else str(self.run_dir.relative_to(exp_dir)),
                "checkpoint": str(self.given_checkpoint) if self.given_checkpoint else None,
                "labels": dict(self.labels)}

    @classmethod
    def from_row(cls, exp_dir: Path, row: dict) -> "PlannedRun":
        key, role, seed = str(row["key"]), str(row["role"]), int(row["seed"])
        teacher = None if row.get("teacher") is None else str(row["teacher"])
        student, method = str(row["student"]), str(row.get("method") or "ce")
        model, labels = str(row.get("model") or ""), dict(row.get("labels") or {})
        if row.get("run_dir"):
            relative = PurePath(str(row["run_dir"]))
            if relative.is_absolute() or ".." in relative.parts or "\0" in str(relative):
                raise ReportError(f"{exp_dir / MANIFEST_FILE}: run {key!r} has run_dir {str(relative)!r}, "
                                  f"which is not inside the experiment; a manifest names its runs relative to it")
            return cls(key, role, student, method, seed, exp_dir / relative, model, teacher, labels=labels)
        given = Path(str(row["checkpoint"])).expanduser()
        if not given.is_absolute() and not given.exists():
            given = exp_dir / given
        return cls(key, role, student, method, seed, ExperimentDir(exp_dir).given_cache(key), model, teacher,
                   given_checkpoint=given, labels=labels)


@dataclass(frozen=True)
class Manifest:
    name: str
    dataset: dict
    seeds: list[int]
    runs: list[PlannedRun]
    imports: list[str] = field(default_factory=list)  # plug-in modules the runs need
    settings: dict = field(default_factory=dict)  # experiment-level settings the report shows (e.g. export formats)

    def write(self, exp_dir: Path) -> None:
        payload = {"name": self.name, "dataset": self.dataset, "seeds": list(self.seeds),
                   "imports": list(self.imports), "settings": dict(self.settings),
                   "runs": [run.row(exp_dir) for run in self.runs]}
        write_text(ExperimentDir(exp_dir).manifest, json.dumps(payload, indent=2) + "\n")

    @classmethod
    def read(cls, exp_dir: Path) -> "Manifest":
        path = ExperimentDir(exp_dir).manifest
        if not path.is_file():
            raise ReportError(f"no {MANIFEST_FILE} in {exp_dir}: not an experiment directory")
        try:
            data = json.loads(path.read_text())
            runs = [PlannedRun.from_row(exp_dir, r) for r in data["runs"]]
            manifest = cls(str(data.get("name") or exp_dir.name), dict(data["dataset"]),
                           [int(s) for s in data.get("seeds", [])], runs, [str(m) for m in data.get("imports", [])],
                           dict(data.get("settings") or {}))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ReportError(f"{path}: malformed manifest ({type(exc).__name__}: {exc})") from None
        for run in runs:
            if run.role not in ROLES:
                raise ReportError(f"{path}: run {run.key!r} has role {run.role!r}; expected one of {', '.join(ROLES)}")
        return manifest
