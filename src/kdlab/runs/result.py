"""A finished run as a Python object: its config, metrics, history, trained model and run directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from kdlab.config import DataConfig, TrainConfig, from_dict, to_dict
from kdlab.models.saved import load_model
from kdlab.rundir import RunDir
from kdlab.runs.evaluate import evaluate_checkpoint, evaluate_module
from kdlab.runs.live import Live

SHOWN_METRICS = ("test_top1", "selected_test_top1", "val_top1", "test_loss", "epochs", "train_time_s")


@dataclass
class Run:
    """What :func:`kdlab.train` / :func:`kdlab.distill` return."""

    config: TrainConfig
    run_dir: Path
    metrics: dict  # the final flat result (what result.json and the CLI's JSON line hold)
    _model: Optional[nn.Module] = field(default=None, repr=False)
    _live: Live = field(default_factory=Live, repr=False)

    @classmethod
    def from_result(cls, cfg: TrainConfig, result: dict, method: Optional[nn.Module], live: Live) -> "Run":
        student = method.students()["student"] if method is not None else None  # type: ignore[operator]
        return cls(cfg, Path(result.get("run_dir") or Path(cfg.out_dir) / str(cfg.name)), result, student, live)

    @property
    def files(self) -> RunDir:
        return RunDir(self.run_dir)

    @property
    def history(self) -> list[dict]:
        """One dict per epoch (losses, learning rate, throughput, val/test metrics)."""
        return self.files.read_history()

    @property
    def history_df(self) -> Any:
        """The history as a pandas DataFrame (needs pandas)."""
        try:
            # optional package: only this property needs it
            import pandas as pd
        except ImportError:
            raise ImportError("history_df needs pandas (pip install pandas); history is a list of dicts") from None
        return pd.DataFrame(self.history)

    @property
    def has_live_model(self) -> bool:
        """True when the student is a Python object of this process (given as an nn.Module)."""
        return self.config.model.name in self._live.models

    @property
    def model(self) -> nn.Module:
        """The trained student (last epoch), in eval mode; loaded from the run directory when it was not trained now."""
        if self._model is None:
            self._model, _ = load_model(self.files.model, torch.device("cpu"), factories=self._live.models,
                                        allowed_imports=self.config.imports)
        return self._model.eval()

    def evaluate(self, data: Any = None, device: str = "auto", **dataset: Any) -> dict:
        """Val/test metrics of the saved student on its own data (or ``data``), as :func:`kdlab.evaluate`."""
        live_data = self._live.data.get(self.config.dataset.name)
        if data is None and live_data is None:
            return evaluate_checkpoint(str(self.run_dir), dataset, device)
        live = Live(data={self.config.dataset.name: data if data is not None else live_data})
        cfg = from_dict(DataConfig, {**to_dict(self.config.dataset), **dataset}, prefix="dataset.")
        return evaluate_module(self.model, cfg, live, device, precision=self.config.precision)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={_fmt(self.metrics[k])}" for k in SHOWN_METRICS if self.metrics.get(k) is not None)
        return f"Run({str(self.run_dir)!r}, {shown})"

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{escape(k)}</td><td>{escape(_fmt(self.metrics[k]))}</td></tr>"
                       for k in SHOWN_METRICS if self.metrics.get(k) is not None)
        return (f"<b>kdlab run</b> <code>{escape(str(self.run_dir))}</code>: {escape(self.config.model.name)} with "
                f"{escape(self.config.method.name)} on {escape(self.config.dataset.name)}<table>{rows}</table>")


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)
