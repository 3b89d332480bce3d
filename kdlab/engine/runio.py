"""A run directory's files and console output, in one place.

Only the main process (rank 0) writes anything, so multi-process training adds a rank here and nowhere else.
Layout of a run directory::

    config.yaml  meta.json          resolved config, kdlab version, git revision, environment
    metrics.jsonl  metrics.csv      one row per epoch (rewritten from the checkpointed history on resume)
    checkpoints/latest.json         pointer to the newest complete checkpoint (written last, atomically)
    checkpoints/epoch-NNNN/         weights.safetensors (students + extra modules), state.pt (optimizer, RNG...)
    model.safetensors               the trained student (last epoch); best.safetensors: the val-selected epoch
    result.json                     final metrics; its presence marks the run finished
    tensorboard/                    event files, when the optional `tensorboard` package is installed
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

from kdlab.engine import checkpoint as ckpt


class RunIO:
    def __init__(self, run_dir: str | Path, rank: int = 0, progress: bool = True) -> None:
        self.run_dir = Path(run_dir)
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
        """Human-readable progress goes to stderr; stdout is kept for machine-readable results."""
        if self.is_main:
            print(message, file=sys.stderr, flush=True)

    def progress(self, iterable: Iterable, total: int, desc: str) -> Any:
        return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr,
                    disable=not (self.is_main and self.progress_enabled), unit="batch")

    # -- metrics ------------------------------------------------------------------------------------------------------
    def write_history(self, history: list[dict]) -> None:
        if not self.is_main:
            return
        ckpt.write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))
        columns = list(dict.fromkeys(k for row in history for k in row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
        ckpt.write_text(self.run_dir / "metrics.csv", buf.getvalue())

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
            self._tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"))
        if self._tensorboard:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(key, value, row["epoch"])
            self._tensorboard.flush()

    def write_json(self, name: str, data: Any) -> None:
        if self.is_main:
            ckpt.write_json(self.run_dir / name, data)

    # -- checkpoints --------------------------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def save_checkpoint(self, epoch: int, weights: dict[str, torch.Tensor], state: dict, meta: dict) -> None:
        """Write epoch ``epoch``'s checkpoint, then point ``latest.json`` at it, then drop older ones."""
        if not self.is_main:
            return
        name = f"epoch-{epoch:04d}"
        target = self.checkpoint_dir / name
        ckpt.save_weights(target / "weights.safetensors", weights, meta)
        ckpt.save_state(target / "state.pt", state)
        ckpt.write_json(self.checkpoint_dir / "latest.json", {"epoch": epoch, "dir": name})
        for old in self.checkpoint_dir.glob("epoch-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self) -> tuple[dict[str, torch.Tensor], dict] | None:
        """The newest complete checkpoint (weights, state), or None for a fresh run."""
        pointer = self.checkpoint_dir / "latest.json"
        if not pointer.is_file():
            return None
        target = self.checkpoint_dir / json.loads(pointer.read_text())["dir"]
        weights, _ = ckpt.load_weights(target / "weights.safetensors")
        return weights, ckpt.load_state(target / "state.pt")

    def save_weights(self, name: str, weights: dict[str, torch.Tensor], meta: dict) -> Path:
        path = self.run_dir / name
        if self.is_main:
            ckpt.save_weights(path, weights, meta)
        return path
