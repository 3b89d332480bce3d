"""``kdlab.Experiment``: an experiment from a YAML file, a dict or keyword arguments, with Python objects allowed.

    exp = kdlab.Experiment("configs/cifar10_resnet50_resnet18.yaml", seeds=[0])        # a file, plus overrides
    exp = kdlab.Experiment(name="mine", dataset=(train_set, test_set),
                           teachers=[{"model": BigNet(), "label": "big"}],
                           students=[SmallNet(), {"name": "resnet18", "pretrained": "torchvision"}],
                           methods=["kd", {"name": "fitnets", "hint_weight": 100}, my_loss],
                           seeds=[0, 1, 2], student_schedule={"epochs": 3})
    exp.run()
    exp.report()          # in Jupyter: the table and the figures, inline

A model given as an ``nn.Module`` starts every one of its runs from a copy of its current weights; data as Dataset
objects (see :mod:`kdlab.data.custom`), or ``{"data": objects, "batch_size": 32, ...}`` with dataset settings; a
method as a Method subclass or a loss function. Everything else is what an
experiment file says (see :mod:`kdlab.experiments.plan`), validated the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from kdlab.config import deep_merge, load_yaml
from kdlab.console import ensure_logging, log
from kdlab.data.custom import data_parts
from kdlab.engine.tracking import log_experiment
from kdlab.experiments.runner import named_modules
from kdlab.experiments.config import ExperimentConfig, default_experiment_path, load_experiment
from kdlab.plugins import object_path
from kdlab.report import build_report
from kdlab.report.notebook import notebook_html
from kdlab.rundir import RunDir, is_checkpoint, weights_file
from kdlab.runs.live import Live, ModuleFactory
from kdlab.runs.result import Run
from kdlab.scale import run_experiment


class Experiment:
    def __init__(self, source: str | Path | dict | None = None, /, **settings: Any) -> None:
        if source is None and not settings:
            source = default_experiment_path()
        tree = load_yaml(source) if isinstance(source, (str, Path)) else dict(source or {})
        self.live = Live()
        tree = deep_merge(tree, {k: v for k, v in settings.items() if k not in _OBJECT_KEYS})
        for key in _OBJECT_KEYS:
            if key in settings:
                tree[key] = settings[key]
        self.config: ExperimentConfig = load_experiment(self._named(tree))

    @property
    def directory(self) -> Path:
        return self.config.directory

    def run(self) -> dict:
        """Train or load every run of the plan (resumable; a lock keeps two runs of it apart); returns the summary."""
        ensure_logging()
        return run_experiment(self.config, log=log.info, live=self.live)

    def report(self, device: str = "cpu") -> "Report":
        """Write the comparison report (tables, figures, index.html) and return it."""
        ensure_logging()
        objects = self.live.data.get(self.config.dataset.name)
        report = Report(build_report(self.directory, device=device, log=log.info, data=objects,
                                     models=self.live.models, imports=named_modules(self.config)))
        if self.config.tracking == "mlflow":
            log_experiment(self.directory, self.config.tracking_uri, self.config.name)
        return report

    # -- Python objects -> names ---------------------------------------------------------------------------------------
    def _named(self, tree: dict) -> dict:
        tree = dict(tree)
        tree["teachers"] = [self._model(self._trained(entry)) for entry in tree.get("teachers") or []]
        tree["students"] = [self._model(entry) for entry in tree.get("students") or []]
        tree["methods"] = [self._method(entry) for entry in tree.get("methods") or []]
        data = tree.get("dataset")
        if isinstance(data, dict) and "data" in data:  # {"data": Dataset objects, <dataset settings>}
            settings = {k: v for k, v in data.items() if k != "data"}
            tree["dataset"] = {**settings, "name": self.live.add("data", data["data"], name=_data_name(data["data"]))}
        elif data is not None and not isinstance(data, (str, dict)) or _is_data_dict(data):
            tree["dataset"] = {"name": self.live.add("data", data, name=_data_name(data))}
        return tree

    def _trained(self, entry: Any) -> Any:
        """A trained teacher given as a :class:`Run`, a run directory or a checkpoint file: used as is
        (``checkpoint:``), its model rebuilt from this process's object where the run trained one."""
        if isinstance(entry, Run):
            if entry.has_live_model:  # its checkpoint names an object of this process, which no import rebuilds
                self.live.add("models", entry.model, name=entry.config.model.name,
                              factory=ModuleFactory(entry.model, fresh_copy=True))
            return {"name": entry.config.model.name, "label": f"{entry.config.model.name}-trained",
                    "checkpoint": str(entry.files.model)}
        if isinstance(entry, (str, Path)) and is_checkpoint(entry):
            config = RunDir(Path(entry) if Path(entry).is_dir() else Path(entry).parent).read_config() or {}
            name = str((config.get("model") or {}).get("name") or Path(entry).stem)
            return {"name": name, "label": Path(entry).name, "checkpoint": str(weights_file(entry))}
        return entry

    def _model(self, entry: Any) -> Any:
        if isinstance(entry, nn.Module):
            entry = {"model": entry}
        if isinstance(entry, dict) and isinstance(entry.get("model"), nn.Module):
            entry = dict(entry)
            module = entry.pop("model")
            entry["name"] = self.live.add("models", module, factory=ModuleFactory(module, fresh_copy=True))
            entry.setdefault("label", type(module).__name__)
        return entry

    def _method(self, entry: Any) -> Any:
        if isinstance(entry, (str, dict)) and not (isinstance(entry, dict) and not isinstance(entry.get("name"), str)):
            return entry
        obj = entry["name"] if isinstance(entry, dict) else entry
        named = {**(entry if isinstance(entry, dict) else {}), "name": self.live.add("methods", obj)}
        named.setdefault("label", getattr(obj, "__name__", "method"))
        return named


_OBJECT_KEYS = ("teachers", "students", "methods", "dataset")



def _is_data_dict(data: Any) -> bool:
    return isinstance(data, dict) and "name" not in data and bool(set(data) & {"train", "val", "test"})


def _data_name(data: Any) -> str:
    train = data_parts(data)["train"]
    return object_path(getattr(train, "dataset", train))


class Report:
    """A written report: its folder, its rows (results.json), and an inline view for Jupyter."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.data = json.loads((self.path / "results.json").read_text())

    @property
    def rows(self) -> list[dict]:
        return list(self.data["rows"])

    @property
    def table(self) -> Any:
        """The rows as a pandas DataFrame (needs pandas)."""
        # optional package: only this property needs it
        import pandas as pd

        return pd.DataFrame(self.rows)

    @property
    def html(self) -> Path:
        return self.path / "index.html"

    def __repr__(self) -> str:
        return f"Report({str(self.path)!r}, {len(self.rows)} rows; open {self.html})"

    def _repr_html_(self) -> str:
        """The page's verdict, tables and figures for Jupyter, from the report's data (results.json)."""
        return notebook_html(self.path)
