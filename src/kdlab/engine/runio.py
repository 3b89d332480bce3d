"""What a training run writes, and its console output, in one place.

Only the main process (rank 0) writes anything, so multi-process training adds a rank here and nowhere else. The
file names and layout are :class:`kdlab.rundir.RunDir`'s.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal

import torch

from kdlab import files
from kdlab.console import log
from kdlab.engine.checkpoint import load_state, save_state
from kdlab.engine.progress import epoch_progress
from kdlab.engine.tracking import RunTracking
from kdlab.errors import CheckpointError
from kdlab.rundir import RunDir

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

CHECKPOINT_FILES = ("weights.safetensors", "state.pt")


class RunIO:
    def __init__(self, run_dir: str | Path, rank: int = 0, progress: bool = True) -> None:
        self.dir = RunDir(run_dir)
        self.run_dir = self.dir.path
        self.rank = rank
        self.progress_enabled = progress
        self._tensorboard: SummaryWriter | Literal[False] | None = None  # False: TensorBoard is not installed
        self._tracking: RunTracking | None = None
        self._tracking_opened = False  # the run's config was read for tracking (once, at its first use)
        self._good: dict | None = None  # the pointer entry of the newest verified checkpoint (the fallback of the next)
        if self.is_main:
            self.dir.claim()  # refuses another tool's folder and planted symbolic links; writes the kdlab marker

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- console ------------------------------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        """Human-readable progress goes to the ``kdlab`` logger (stderr); stdout is kept for machine-readable
        results."""
        if self.is_main:
            log.info(message)

    def progress(self, iterable: Iterable, total: int, desc: str, start: int = 0) -> Any:
        """The epoch's batches with progress shown: a bar on a terminal or in a notebook, a few lines in a log file
        (:mod:`kdlab.engine.progress`); ``start``: batches done before (a resumed epoch)."""
        return epoch_progress(iterable, total, desc, self.is_main and self.progress_enabled, self.log, start=start)

    # -- metrics ------------------------------------------------------------------------------------------------------
    def write_history(self, history: list[dict]) -> None:
        if not self.is_main:
            return
        files.write_text(self.dir.metrics, "".join(json.dumps(row) + "\n" for row in history))
        columns = list(dict.fromkeys(k for row in history for k in row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
        files.write_text(self.dir.metrics_csv, buf.getvalue())

    def log_scalars(self, row: dict) -> None:
        """One epoch's numbers to TensorBoard, if it is installed (an optional extra), and to MLflow when the run's
        config says ``tracking: mlflow``; CSV is always written."""
        if not self.is_main:
            return
        if tracking := self.tracking():
            tracking.epoch(row)
        if self._tensorboard is None:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional package (the tensorboard extra)
            except ImportError:
                self._tensorboard = False
                return
            self._tensorboard = SummaryWriter(str(self.dir.tensorboard))
        if self._tensorboard:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(key, value, row["epoch"])
            self._tensorboard.flush()

    def write_json(self, path: Path, data: Any) -> None:
        """Write one of the run directory's JSON files (``self.dir.meta``, ``self.dir.result``...). The result (the
        run finished) or a failure (it stopped) also ends the run's tracking."""
        if not self.is_main:
            return
        files.write_json(path, data)
        if path in (self.dir.result, self.dir.failure) and (tracking := self.tracking()):
            tracking.finish(data if path == self.dir.result else None)
            self._tracking = None

    def tracking(self) -> RunTracking | None:
        """The run's experiment tracking (:mod:`kdlab.engine.tracking`), opened on first use as the run's
        ``config.yaml`` asks, or None (not asked for, not the main process, or it failed to start)."""
        if not self._tracking_opened and self.is_main:
            self._tracking_opened = True
            self._tracking = RunTracking.open(self.dir, self.log)
        return self._tracking

    def update_json(self, path: Path, data: dict) -> None:
        """Add ``data``'s keys to one of the run directory's JSON objects (``self.dir.meta``), creating it if absent
        or unreadable; the other keys stay."""
        if not self.is_main:
            return
        try:
            current = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            current = {}
        files.write_json(path, {**(current if isinstance(current, dict) else {}), **data})

    # -- checkpoints --------------------------------------------------------------------------------------------------
    def save_checkpoint(self, epoch: int, weights: dict[str, torch.Tensor], state: dict, meta: dict,
                        batch: int = 0) -> None:
        """Write the checkpoint after ``epoch`` epochs (and ``batch`` batches of the next: a mid-epoch one), checksum
        its files as written, then point ``latest.json`` at it (with the checkpoint before it, kept as a fallback),
        then drop older ones."""
        if not self.is_main:
            return
        name = checkpoint_name(epoch, batch)
        target = self.dir.checkpoints / name
        files.save_weights(target / "weights.safetensors", weights, meta)
        save_state(target / "state.pt", state)
        entry = {"epoch": epoch, "batch": batch, "dir": name,
                 "sha256": {f: files.sha256_file(target / f) for f in CHECKPOINT_FILES}}
        previous = self._good if self._good is not None and _position(self._good) < (epoch, batch) else None
        files.write_json(self.dir.latest, {**entry, "previous": previous})
        self._good = entry
        keep = {name, previous["dir"] if previous else name}
        for old in self.dir.checkpoints.glob("epoch-*"):
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self) -> tuple[dict[str, torch.Tensor], dict] | None:
        """The newest checkpoint whose files match their recorded checksums and load (weights, state), or None for a
        fresh run. A damaged newest checkpoint falls back to the one before it with one warning line; when none is
        good, a one-line CheckpointError names the damaged file and what to delete."""
        if not self.dir.latest.is_file():
            return None
        fresh = f"delete {self.dir.checkpoints} to train {self.run_dir.name} from the start"
        try:
            pointer = json.loads(self.dir.latest.read_text())
            entries = [pointer] + ([pointer["previous"]] if pointer.get("previous") else [])
            for entry in entries:
                if not re.fullmatch(r"epoch-\d+(-batch-\d+)?", entry["dir"]) or _position(entry) <= (0, 0):
                    raise ValueError(f"not a checkpoint: {entry['dir']!r}, epoch {entry['epoch']!r}")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{self.dir.latest} is damaged ({type(exc).__name__}: {str(exc)[:80]}); "
                                  f"{fresh}") from None
        problems = []
        for entry in entries:
            try:
                found = self._load_verified(entry)
            except CheckpointError as exc:
                problems.append(str(exc))
                continue
            if problems:
                self.log(f"warning: {problems[0]}; resuming from the checkpoint before it, {entry['dir']}")
            self._good = entry
            return found
        raise CheckpointError(f"no usable checkpoint: {'; '.join(problems)}; {fresh}")

    def _load_verified(self, entry: dict) -> tuple[dict[str, torch.Tensor], dict]:
        """One checkpoint's weights and state, after checking its files against the pointer's sha256 (pointers
        written before checksums were recorded have none: their files are only parsed)."""
        target = self.dir.checkpoints / entry["dir"]
        for name, digest in (entry.get("sha256") or {}).items():
            try:
                ok = files.sha256_file(target / name) == digest
            except OSError as exc:
                raise CheckpointError(f"{target / name} is unreadable ({exc.strerror})") from None
            if not ok:
                raise CheckpointError(f"{target / name} is damaged (its sha256 differs from the one in "
                                      f"{self.dir.latest.name})")
        weights, _ = files.load_weights(target / "weights.safetensors")
        return weights, load_state(target / "state.pt")

    def write_checksums(self) -> None:
        """Record the sha256 of the run's final weights files (before result.json marks it finished), so a damaged
        one is never served as finished (:meth:`kdlab.rundir.RunDir.check_finished`)."""
        if self.is_main:
            files.write_json(self.dir.checksums,
                             {p.name: files.sha256_file(p) for p in sorted(self.run_dir.glob("*.safetensors"))})

    def write_result(self, result: dict) -> None:
        """Finish the run: checksums.json (the final weights, result.json's exact text and config.yaml), then
        result.json, whose presence marks the run finished (:meth:`kdlab.rundir.RunDir.verify_result` checks it)."""
        if not self.is_main:
            return
        text = files.json_text(result)
        sums = {p.name: files.sha256_file(p) for p in sorted(self.run_dir.glob("*.safetensors"))}
        sums[self.dir.result.name] = hashlib.sha256(text.encode()).hexdigest()
        if self.dir.config.is_file():
            sums[self.dir.config.name] = files.sha256_file(self.dir.config)
        files.write_json(self.dir.checksums, sums)
        files.write_text(self.dir.result, text)
        if tracking := self.tracking():  # the run finished: its tracking ends with its final metrics and files
            tracking.finish(result)
            self._tracking = None

    def save_student(self, name: str, weights: dict[str, torch.Tensor], meta: dict) -> Path:
        """Save a student's weights as the run's ``model.safetensors`` (``name="student"``) or
        ``<name>.safetensors``."""
        return self.save_weights(self.dir.student_file(name), weights, meta)

    def save_weights(self, path: Path, weights: dict[str, torch.Tensor], meta: dict) -> Path:
        if self.is_main:
            files.save_weights(path, weights, meta)
        return path


def checkpoint_name(epoch: int, batch: int = 0) -> str:
    """The folder of the checkpoint after ``epoch`` epochs: ``epoch-0003``; after ``batch`` more batches of the
    next epoch (mid-epoch): ``epoch-0003-batch-001200``."""
    name = RunDir.epoch_name(epoch)
    return f"{name}-batch-{batch:06d}" if batch else name


def _position(entry: dict) -> tuple[int, int]:
    """(epochs done, batches of the next) of a ``latest.json`` entry (older pointers have no batch: 0)."""
    return int(entry["epoch"]), int(entry.get("batch") or 0)
