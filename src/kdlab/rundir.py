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
    checksums.json               sha256 of the final weights files (and of result.json and config.yaml), written
                                 just before result.json
    .kdlab-run                   the marker: kdlab made this folder (no other folder is ever cleaned or written)
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

import yaml

from kdlab.config import MAX_CONFIG_BYTES, yaml_load
from kdlab.errors import CheckpointError, ConfigError
from kdlab.files import find_symlink, sha256_file, write_text

MODEL_FILE = "model.safetensors"
EXPORT_RESULT = "export.json"
MARKER_FILE = ".kdlab-run"
# Files only kdlab writes: a run directory made before the marker existed is recognized by one of them
LEGACY_MARKERS = ("identity.json", "checkpoints/latest.json")
# What a folder kdlab creates may hold before it is marked (its lock, a killed write's temporary file)
_UNMARKED_OK = (".lock",)


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
        checksums.json itself when it is missing or garbled (nothing can be verified then). result.json and
        config.yaml are checked by :meth:`verify_result`."""
        recorded = self.read_checksums()
        if recorded is None:
            return [self.checksums]

        bad = []
        for name, digest in sorted(recorded.items()):
            if name in (self.result.name, self.config.name):
                continue
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
        bad = [p for p in self.damaged_files() if only is None or p.name in (Path(only).name, self.checksums.name)]
        if bad:

            fix = f"delete {self.path} to train the run again"
            if bad[0] != self.best:  # the students' files are rewritten from the last checkpoint; best.* is not
                fix = f"delete {self.result} and run the same command to rewrite it from the last checkpoint, or {fix}"
            if bad[0] == self.checksums:
                what = "is missing or garbled (the run's weights cannot be verified)"
            elif not bad[0].exists():
                what = "is missing"
            else:
                what = f"is damaged (its sha256 differs from the one recorded in {self.checksums.name} when the run " \
                       f"finished)"
            raise CheckpointError(f"{bad[0]} {what}, so the run is not served as finished: {fix}")

    def read_checksums(self) -> dict[str, str] | None:
        """``{file name: sha256}`` of checksums.json, or None when it is missing or garbled."""
        data = _read_json(self.checksums)
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            return None
        return data

    def verify_result(self, required: bool = False) -> dict:
        """result.json, once its sha256 (and config.yaml's) matches the one recorded in checksums.json, as a dict;
        raise one line naming the file otherwise. A run finished before result.json's sha256 was recorded is
        accepted when it parses, unless ``required``. Call it (after :meth:`check_finished`) before trusting a result.
        """
        fix = f"delete {self.result} and run the same command to rewrite it, or delete {self.path}"
        recorded = self.read_checksums() or {}
        for path in (self.result, self.config):
            digest = recorded.get(path.name)
            if digest is None:
                if required and path == self.result:
                    raise CheckpointError(f"{path} is not recorded in {self.checksums.name}, so it cannot be "
                                          f"verified: {fix}")
                continue
            try:
                ok = sha256_file(path) == digest
            except OSError:
                ok = False
            if not ok:
                raise CheckpointError(f"{path} is missing or damaged (its sha256 differs from the one recorded in "
                                      f"{self.checksums.name}): {fix}")
        result = self.read_result()
        if result is None:
            raise CheckpointError(f"{self.result} is missing or not a JSON mapping: {fix}")
        return result

    # -- ownership and containment ------------------------------------------------------------------------------------
    @property
    def marker(self) -> Path:
        return self.path / MARKER_FILE

    def is_kdlab_run(self) -> bool:
        """True when kdlab made this folder: its marker (a regular file), or, for a run made before the marker
        existed, a file only kdlab writes (identity.json, checkpoints/latest.json)."""
        if self.marker.is_file() and not self.marker.is_symlink():
            return True
        return any((self.path / name).is_file() for name in LEGACY_MARKERS)

    def check_ours(self) -> None:
        """Refuse (one line) a folder kdlab did not make that holds anything: it is never written, cleaned or
        overwritten. A missing or empty folder (or one holding only kdlab's lock) is fine."""
        self.check_no_symlinks()
        if not self.path.is_dir() or self.is_kdlab_run():
            return
        if any(p.name not in _UNMARKED_OK and not p.name.endswith(".tmp") for p in self.path.iterdir()):
            raise ConfigError(f"{self.path} exists and was not made by kdlab (no {MARKER_FILE} file): kdlab never "
                              f"writes into or cleans another folder; set name=... or out_dir=... for a new run")

    def claim(self) -> None:
        """Make this run directory kdlab's: check it (:meth:`check_ours`), create it and write its marker."""
        self.check_ours()
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.marker.is_file():
            write_text(self.marker, "kdlab run directory: kdlab may write, resume and clean what is in here\n")

    def check_no_symlinks(self) -> None:
        """Refuse (one line) a run directory that is, or holds, a symbolic link: a write through it would land outside
        out_dir (a planted ``checkpoints -> /elsewhere``, or ``config.yaml -> ~/.bashrc``)."""
        link = find_symlink(self.path)
        if link is not None:

            raise ConfigError(f"{link} is a symbolic link: kdlab writes only real files inside out_dir; remove it, "
                              f"or set name=... / out_dir=... for a new run")

    def has_run_files(self) -> bool:
        """True when the folder holds what a run writes once it has trained (a checkpoint, weights, a result)."""
        return any(p.exists() for p in (self.checkpoints, self.result, self.model, self.best, self.identity))

    def require_config(self) -> dict | None:
        """The recorded config, or None for a folder holding no run yet. A folder with a run's files but no readable
        config.yaml is refused (one line): its checkpoints could not be proven to belong to any config, so they are
        never resumed under another one."""
        config = self.read_config()
        if config is None and self.has_run_files():

            raise CheckpointError(f"{self.config} is missing or unreadable but {self.path} holds a run's files, whose "
                                  f"config cannot be proven: restore {self.config.name}, or delete {self.path} to "
                                  f"train the run again")
        return config

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
        """config.yaml as a mapping (read strictly, see :class:`kdlab.config.StrictLoader`), or None."""
        if not self.config.is_file():
            return None


        try:
            if self.config.stat().st_size > MAX_CONFIG_BYTES:
                return None
            data = yaml_load(self.config.read_text())
        except (yaml.YAMLError, OSError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) else None


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
