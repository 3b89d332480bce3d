"""The run directory: where each file of a run lives and what those files say about the run's state.

One owner for the layout: the engine and the runner write through these names; the experiment runner, the report and
``kdlab eval`` read through them::

    config.yaml                  the resolved config
    identity.json                what else decides the result: plug-in sources, data, teacher and initial weights
    meta.json                    kdlab version, git revision, environment, imported plug-ins
    metrics.jsonl  metrics.csv   one row per epoch (rewritten from the checkpointed history on resume)
    checkpoints/latest.json      pointer to the newest complete checkpoint and the one before it, with the sha256
                                 of their files (written last, atomically; see kdlab.engine.runio)
    checkpoints/epoch-NNNN/      weights.safetensors (students + extra modules), state.pt (optimizer, RNG...)
    model.safetensors            the trained student (last epoch); best.safetensors: the val-selected epoch
    <name>.safetensors           further students of a method that trains several (dml: student2...)
    checksums.json               sha256 of the final weights files, written just before result.json
    result.json                  final metrics; its presence marks the run finished
    failure.json                 why a run stopped unfinished (a NaN loss: part, epoch, step); removed on success
    export/<format>/             ``kdlab export``: the exported student, export.json, MODEL_CARD.md, model_card.json
    tensorboard/                 event files, when the optional ``tensorboard`` package is installed
    tracking.json                ``tracking: mlflow``: the server and MLflow run this run logs to (resumed with it)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MODEL_FILE = "model.safetensors"
EXPORT_RESULT = "export.json"


def weights_file(path: str | Path) -> Path:
    """The weights file ``path`` names: a run directory means its ``model.safetensors``."""
    path = Path(path)
    return path / MODEL_FILE if path.is_dir() else path


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a kdlab checkpoint: a run directory holding ``model.safetensors``, or a ``.safetensors``
    file (a registered model's name is neither)."""
    return Path(path).exists() and weights_file(path).suffix == ".safetensors" and weights_file(path).is_file()


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    # -- file names ---------------------------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def identity(self) -> Path:
        return self.path / "identity.json"

    @property
    def meta(self) -> Path:
        return self.path / "meta.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def metrics_csv(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def result(self) -> Path:
        return self.path / "result.json"

    @property
    def checksums(self) -> Path:
        return self.path / "checksums.json"

    def damaged_files(self) -> list[Path]:
        """The final weights files whose sha256 differs from the one recorded when the run finished, and
        model.safetensors if it is gone (a missing best.safetensors is read as "no val selection" where it is used);
        empty for a run finished before checksums were recorded."""
        recorded = _read_json(self.checksums)
        if not isinstance(recorded, dict):
            return []
        from kdlab.files import sha256_file

        bad = []
        for name, digest in sorted(recorded.items()):
            path = self.path / name
            try:
                if sha256_file(path) != digest:
                    bad.append(path)
            except FileNotFoundError:
                if path == self.model:
                    bad.append(path)
            except OSError:
                bad.append(path)
        return bad

    def check_finished(self, only: Path | None = None) -> None:
        """Raise a one-line CheckpointError if a finished run's weights (or only the file ``only``) are damaged, saying
        what to do."""
        bad = [p for p in self.damaged_files() if only is None or p.name == Path(only).name]
        if bad:
            from kdlab.errors import CheckpointError

            fix = f"delete {self.path} to train the run again"
            if bad[0] != self.best:  # the students' files are rewritten from the last checkpoint; best.* is not
                fix = f"delete {self.result} and run the same command to rewrite it from the last checkpoint, or {fix}"
            what = "is missing" if not bad[0].exists() else (f"is damaged (its sha256 differs from the one recorded "
                                                              f"in {self.checksums.name} when the run finished)")
            raise CheckpointError(f"{bad[0]} {what}, so the run is not served as finished: {fix}")

    @property
    def failure(self) -> Path:
        return self.path / "failure.json"

    def read_failure(self) -> dict | None:
        data = _read_json(self.failure)
        return data if isinstance(data, dict) else None

    @property
    def model(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def best(self) -> Path:
        return self.path / "best.safetensors"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.checkpoints / "latest.json"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def tracking(self) -> Path:
        return self.path / "tracking.json"

    def export_dir(self, fmt: str, weights: str = "model") -> Path:
        """Where ``kdlab export`` writes format ``fmt`` of the student ``<weights>.safetensors``: ``export/<fmt>``
        for model.safetensors, ``export/<weights>-<fmt>`` for another one (best, student2...)."""
        return self.path / "export" / (fmt if weights == self.model.stem else f"{weights}-{fmt}")

    def export_result(self, fmt: str) -> Path:
        """The JSON of a complete, verified export of the run's student (written last by ``kdlab export``)."""
        return self.export_dir(fmt) / EXPORT_RESULT

    def read_export(self, fmt: str) -> dict | None:
        data = _read_json(self.export_result(fmt))
        return data if isinstance(data, dict) else None

    def student_file(self, name: str) -> Path:
        """Where the student called ``name`` is saved: ``student`` is model.safetensors, others
        ``<name>.safetensors``."""
        return self.model if name == "student" else self.path / f"{name}.safetensors"

    @staticmethod
    def epoch_name(epoch: int) -> str:
        return f"epoch-{epoch:04d}"

    # -- state --------------------------------------------------------------------------------------------------------
    def finished(self) -> bool:
        return self.result.is_file()

    def epochs_done(self) -> int:
        """Epochs of the newest complete checkpoint (0 when there is none or its pointer is unreadable)."""
        pointer = _read_json(self.latest)
        try:
            return int(pointer["epoch"]) if isinstance(pointer, dict) else 0
        except (KeyError, TypeError, ValueError):
            return 0

    def describe_state(self, epochs: int) -> str:
        """``done``, ``resuming after epoch N/E`` or ``training``."""
        if self.finished():
            return "done"
        done = self.epochs_done()
        return f"resuming after epoch {done}/{epochs}" if done else "training"

    def read_result(self) -> dict | None:
        data = _read_json(self.result)
        return data if isinstance(data, dict) else None

    def read_history(self) -> list[dict]:
        if not self.metrics.is_file():
            return []
        rows = []
        for line in self.metrics.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # a torn last line of a killed run: the checkpointed history rewrites it on resume
                break
        return rows

    def read_config(self) -> dict | None:
        if not self.config.is_file():
            return None
        import yaml

        try:
            data = yaml.safe_load(self.config.read_text())
        except yaml.YAMLError:
            return None
        return data if isinstance(data, dict) else None


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
