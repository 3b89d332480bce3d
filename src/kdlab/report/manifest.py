"""An experiment directory's manifest: the one list of its runs, written by ``kdlab run`` and read by the report.

    EXP/experiment.yaml     the resolved experiment config
    EXP/manifest.json       name, dataset settings, seeds, plug-ins, and one row per run (this module's format)
    EXP/summary.json        wall time, training-loop time, teacher passes of the last invocation that trained
    EXP/runs/<run>/         one run directory each (see kdlab.rundir)
    EXP/report/             the report (tables, figures, index.html)

A row's ``run_dir`` is relative to the experiment, so a moved or copied experiment still reports; a teacher given
as a finished checkpoint has ``checkpoint`` instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from kdlab.errors import KdlabError
from kdlab.files import write_text
from kdlab.rundir import RunDir

MANIFEST_FILE = "manifest.json"
ROLES = ("teacher", "assistant", "baseline", "student")


class ReportError(KdlabError):
    """An experiment directory that cannot be reported on (no or malformed manifest, nothing finished)."""


def file_safe(text: str) -> str:
    """``text`` with every character but letters, digits, ``-``, ``_`` and ``.`` replaced by ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


@dataclass(frozen=True)
class ManifestRun:
    """One run as the manifest lists it, with its paths resolved against the experiment directory."""

    key: str
    role: str
    teacher: str | None  # label of the teacher (or assistant) it was distilled from
    student: str  # label of its model
    method: str
    seed: int
    run_dir: Path  # where its files are; for a given checkpoint, where the report caches its predictions
    model: str  # architecture name
    path: str  # run_dir as the manifest gives it (relative to the experiment), or the given checkpoint
    checkpoint: Path | None = None  # a teacher supplied as a finished checkpoint (not trained here)
    labels: dict = field(default_factory=dict)  # free-form labels (e.g. swept hyperparameters), shown by the report

    @property
    def files(self) -> RunDir:
        return RunDir(self.run_dir)

    @property
    def model_path(self) -> Path:
        return self.checkpoint or self.files.model

    @property
    def best_path(self) -> Path | None:
        return None if self.checkpoint else self.files.best

    def row(self, exp_dir: Path) -> dict:
        """The manifest row (paths relative to ``exp_dir``)."""
        return {"key": self.key, "role": self.role, "teacher": self.teacher, "student": self.student,
                "method": self.method, "seed": self.seed, "model": self.model,
                "run_dir": None if self.checkpoint else str(self.run_dir.relative_to(exp_dir)),
                "checkpoint": str(self.checkpoint) if self.checkpoint else None, "labels": dict(self.labels)}

    @classmethod
    def from_row(cls, exp_dir: Path, row: dict) -> "ManifestRun":
        common = {"key": str(row["key"]), "role": str(row["role"]), "teacher": row.get("teacher"),
                  "student": str(row["student"]), "method": str(row.get("method") or "ce"), "seed": int(row["seed"]),
                  "model": str(row.get("model") or ""), "labels": dict(row.get("labels") or {})}
        if row.get("run_dir"):
            relative = PurePath(str(row["run_dir"]))
            if relative.is_absolute() or ".." in relative.parts or "\0" in str(relative):
                raise ReportError(f"{exp_dir / MANIFEST_FILE}: run {common['key']!r} has run_dir {str(relative)!r}, "
                                  f"which is not inside the experiment; a manifest names its runs relative to it")
            return cls(**common, run_dir=exp_dir / relative, path=str(relative))
        given = Path(str(row["checkpoint"])).expanduser()
        if not given.is_absolute() and not given.exists():
            given = exp_dir / given
        cache_dir = exp_dir / "report" / "cache" / f"given-{file_safe(common['key'])}"
        return cls(**common, run_dir=cache_dir, path=str(given), checkpoint=given)


@dataclass(frozen=True)
class Manifest:
    name: str
    dataset: dict
    seeds: list[int]
    runs: list[ManifestRun]
    imports: list[str] = field(default_factory=list)  # plug-in modules the runs need
    settings: dict = field(default_factory=dict)  # experiment-level settings the report shows (e.g. export formats)

    def write(self, exp_dir: Path) -> None:
        payload = {"name": self.name, "dataset": self.dataset, "seeds": list(self.seeds),
                   "imports": list(self.imports), "settings": dict(self.settings),
                   "runs": [run.row(exp_dir) for run in self.runs]}
        write_text(exp_dir / MANIFEST_FILE, json.dumps(payload, indent=2) + "\n")

    @classmethod
    def read(cls, exp_dir: Path) -> "Manifest":
        path = exp_dir / MANIFEST_FILE
        if not path.is_file():
            raise ReportError(f"no {MANIFEST_FILE} in {exp_dir}: not an experiment directory")
        try:
            data = json.loads(path.read_text())
            runs = [ManifestRun.from_row(exp_dir, r) for r in data["runs"]]
            manifest = cls(str(data.get("name") or exp_dir.name), dict(data["dataset"]),
                           [int(s) for s in data.get("seeds", [])], runs, [str(m) for m in data.get("imports", [])],
                           dict(data.get("settings") or {}))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ReportError(f"{path}: malformed manifest ({type(exc).__name__}: {exc})") from None
        for run in runs:
            if run.role not in ROLES:
                raise ReportError(f"{path}: run {run.key!r} has role {run.role!r}; expected one of {', '.join(ROLES)}")
        return manifest
