"""What a training run writes, and its console output, in one place.

Only the main process (rank 0) writes anything, so multi-process training adds a rank here and nowhere else. The
file names and layout are :class:`kdlab.rundir.RunDir`'s.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable

import torch
from tqdm import tqdm

from kdlab import files
from kdlab.console import log
from kdlab.engine.checkpoint import load_state, save_state
from kdlab.rundir import RunDir


class RunIO:
    def __init__(self, run_dir: str | Path, rank: int = 0, progress: bool = True) -> None:
        self.dir = RunDir(run_dir)
        self.run_dir = self.dir.path
        self.rank = rank
        self.progress_enabled = progress
        self._tensorboard = None
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- console ------------------------------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        """Human-readable progress goes to the ``kdlab`` logger (stderr); stdout is kept for machine-readable results."""
        if self.is_main:
            log.info(message)

    def progress(self, iterable: Iterable, total: int, desc: str) -> Any:
        return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr,
                    disable=not (self.is_main and self.progress_enabled), unit="batch")

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
        """One epoch's numbers to TensorBoard, if it is installed (an optional extra); CSV is always written."""
        if not self.is_main:
            return
        if self._tensorboard is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
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
        """Write one of the run directory's JSON files (``self.dir.meta``, ``self.dir.result``...)."""
        if self.is_main:
            files.write_json(path, data)

    # -- checkpoints --------------------------------------------------------------------------------------------------
    def save_checkpoint(self, epoch: int, weights: dict[str, torch.Tensor], state: dict, meta: dict) -> None:
        """Write epoch ``epoch``'s checkpoint, then point ``latest.json`` at it, then drop older ones."""
        if not self.is_main:
            return
        name = RunDir.epoch_name(epoch)
        target = self.dir.checkpoints / name
        files.save_weights(target / "weights.safetensors", weights, meta)
        save_state(target / "state.pt", state)
        files.write_json(self.dir.latest, {"epoch": epoch, "dir": name})
        for old in self.dir.checkpoints.glob("epoch-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self) -> tuple[dict[str, torch.Tensor], dict] | None:
        """The newest complete checkpoint (weights, state), or None for a fresh run."""
        if not self.dir.latest.is_file():
            return None
        target = self.dir.checkpoints / json.loads(self.dir.latest.read_text())["dir"]
        weights, _ = files.load_weights(target / "weights.safetensors")
        return weights, load_state(target / "state.pt")

    def save_student(self, name: str, weights: dict[str, torch.Tensor], meta: dict) -> Path:
        """Save a student's weights as the run's ``model.safetensors`` (``name="student"``) or ``<name>.safetensors``."""
        return self.save_weights(self.dir.student_file(name), weights, meta)

    def save_weights(self, path: Path, weights: dict[str, torch.Tensor], meta: dict) -> Path:
        if self.is_main:
            files.save_weights(path, weights, meta)
        return path
