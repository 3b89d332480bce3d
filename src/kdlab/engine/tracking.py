"""Experiment tracking with MLflow: opt-in (``tracking: mlflow``), and never a reason for a run to stop.

A run logs its config as parameters (flattened keys: ``optim.lr``), each epoch's numbers as metrics (step = epoch),
its final metrics (step = epochs), and ``model.safetensors`` and ``result.json`` as artifacts. An experiment's
report folder becomes the artifacts of a parent run, under which its runs are nested (:func:`log_experiment`).
The server is ``tracking_uri`` or ``$MLFLOW_TRACKING_URI``; the MLflow experiment is ``$MLFLOW_EXPERIMENT_NAME`` or
``kdlab``. The run directory's ``tracking.json`` names the MLflow run, so a resumed run goes on logging to it.

mlflow is imported only when tracking is on. Each call to the server is short (:data:`SHORT_CALLS`: a 5 s timeout,
no retries, unless the environment sets them) and the first failure (server gone, package missing) writes one
warning line and turns tracking off for the rest of the run: training goes on.
"""

from __future__ import annotations

import io
import json
import os
import time
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from kdlab import files
from kdlab.console import log as kdlab_log
from kdlab.rundir import RunDir

DEFAULT_EXPERIMENT = "kdlab"
# MLflow reads these at each request; set for kdlab's calls only, and only where the environment leaves them unset
SHORT_CALLS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
               "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0"}
PARAMS_PER_CALL = 100  # MLflow's limit for one log_batch
PARAM_CHARS = 6000  # MLflow's limit for a parameter's value
REPORT_SKIP = ("cache",)  # report sub-folders that are not the report (the evaluation cache)


@contextmanager
def short_calls() -> Iterator[None]:
    """MLflow calls with a short timeout and no retries, and without the lines MLflow prints on stdout (kept for
    kdlab's JSON results)."""
    added = {k: v for k, v in SHORT_CALLS.items() if k not in os.environ}
    os.environ.update(added)
    try:
        with redirect_stdout(io.StringIO()):
            yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """A config tree as MLflow parameters: ``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": "0.1"}`` (lists as JSON)."""
    if isinstance(tree, dict):
        out: dict[str, str] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    text = json.dumps(tree) if isinstance(tree, (list, tuple)) else str(tree)
    return {prefix.rstrip("."): text[:PARAM_CHARS]}


def numbers(row: dict) -> dict[str, float]:
    """The numeric entries of a metrics row (no bools, no strings, no None)."""
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class MlflowTracker:
    """One kdlab run (or experiment) as one MLflow run, through ``MlflowClient`` (no global active run)."""

    def __init__(self, uri: str, log: Callable[[str], None]) -> None:
        self.uri, self.log = uri, log
        self.client: Any = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.failed = False

    @property
    def active(self) -> bool:
        return self.run_id is not None and not self.failed

    def call(self, what: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` against the server, or None after the first failure (which warns, one line)."""
        if self.failed:
            return None
        try:
            with short_calls():
                return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - whatever the server or client raises, training goes on
            self.failed = True
            detail = (str(exc).strip().splitlines() or [""])[0][:160]
            self.log(f"warning: MLflow tracking at {self.uri} stopped ({what}: {type(exc).__name__}: {detail}); "
                     f"the run goes on untracked")
            return None

    def open(self, run_name: str, record: Path, tags: dict[str, str], experiment_id: str | None = None) -> bool:
        """Start (or, when ``record`` names one on this server, resume) the MLflow run; write ``record``."""
        try:
            from mlflow.tracking import MlflowClient  # optional package (the mlflow extra): tracking on
        except ImportError:
            self.failed = True
            self.log("warning: tracking: mlflow needs the mlflow package (pip install 'kdlab[mlflow]'); the run goes "
                     "on untracked")
            return False
        self.client = MlflowClient(self.uri)
        previous = _read(record)
        if previous.get("uri") == self.uri and previous.get("run_id"):
            self.run_id, self.experiment_id = previous["run_id"], previous.get("experiment_id")
            self.call("resume run", self.client.update_run, self.run_id, status="RUNNING")
            return not self.failed
        self.experiment_id = experiment_id or self.call("experiment", self._experiment_id)
        run = None if self.failed else self.call("create run", self.client.create_run, self.experiment_id,
                                                 run_name=run_name, tags=tags)
        if run is None:
            return False
        self.run_id = run.info.run_id
        files.write_json(record, {"uri": self.uri, "run_id": self.run_id, "experiment_id": self.experiment_id})
        return True

    def _experiment_id(self) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        found = self.client.get_experiment_by_name(name)
        return found.experiment_id if found is not None else self.client.create_experiment(name)

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param  # optional package (the mlflow extra)

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), PARAMS_PER_CALL):
            if self.active:
                self.call("log params", self.client.log_batch, self.run_id, params=items[i:i + PARAMS_PER_CALL])

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric  # optional package (the mlflow extra)

        if self.active and values:
            stamp = int(time.time() * 1000)
            self.call("log metrics", self.client.log_batch, self.run_id,
                      metrics=[Metric(k, v, stamp, step) for k, v in values.items()])

    def log_artifacts(self, paths: list[Path], under: str | None = None) -> None:
        for path in paths:
            if not self.active or not path.exists():
                continue
            if path.is_dir():
                self.call(f"upload {path.name}", self.client.log_artifacts, self.run_id, str(path), under)
            else:
                self.call(f"upload {path.name}", self.client.log_artifact, self.run_id, str(path), under)

    def close(self, status: str) -> None:
        if self.active:
            self.call("end run", self.client.set_terminated, self.run_id, status)


class RunTracking:
    """A training run's tracking, as its run directory's ``config.yaml`` asks (``tracking``, ``tracking_uri``).

    :class:`kdlab.engine.runio.RunIO` opens it at the first epoch's metrics (the config is written by then), feeds
    it each epoch's row and closes it with the result, so every way of running a run (one process, workers, DDP's
    rank 0) is tracked without further wiring.
    """

    def __init__(self, tracker: MlflowTracker, run: RunDir) -> None:
        self.tracker, self.run = tracker, run

    @classmethod
    def open(cls, run: RunDir, log: Callable[[str], None]) -> RunTracking | None:
        """The run's tracking, started, or None when its config does not ask for tracking (or it could not start:
        then one warning line was written)."""
        config = run.read_config() or {}
        if config.get("tracking") != "mlflow":
            return None
        uri = config.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            log("warning: tracking: mlflow without tracking_uri or $MLFLOW_TRACKING_URI; the run goes on untracked")
            return None
        tracker = MlflowTracker(uri, log)
        tags = {"kdlab.run_dir": str(run.path.resolve()), "kdlab.kind": "run"}
        if not tracker.open(run.path.name, run.tracking, tags):
            return None
        tracker.log_params(flatten(config))
        log(f"tracking to MLflow at {uri} (run {tracker.run_id})")
        return cls(tracker, run)

    def epoch(self, row: dict) -> None:
        """One epoch's numbers, at step = epoch."""
        self.tracker.log_metrics({k: v for k, v in numbers(row).items() if k != "epoch"}, int(row["epoch"]))

    def finish(self, result: dict | None) -> None:
        """The final metrics (step = epochs) and artifacts, then the MLflow run ends: FINISHED with a result, else
        FAILED (``failure.json`` is uploaded instead)."""
        if result is not None:
            final = {f"final_{k}": v for k, v in numbers(result).items() if k != "epochs"}
            self.tracker.log_metrics(final, int(result.get("epochs") or 0))
            self.tracker.log_artifacts([self.run.model, self.run.result])
        else:
            self.tracker.log_artifacts([self.run.failure])
        self.tracker.close("FINISHED" if result is not None else "FAILED")


def log_experiment(exp_dir: str | Path, uri: str | None, name: str,
                   log: Callable[[str], None] = kdlab_log.info) -> str | None:
    """Log an experiment directory to MLflow as one parent run named ``name``: its config (``experiment.yaml``) as
    parameters, its ``manifest.json``, ``summary.json`` and ``report/`` folder (less the evaluation cache) as
    artifacts; the runs it trained with tracking on (their ``tracking.json`` on the same server) become its children.
    Returns the parent run's id, or None when tracking failed (one warning line; the caller goes on). Called again
    for the same directory, it updates the same parent run (``EXP/tracking.json``)."""
    exp_dir = Path(exp_dir)
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        log("warning: MLflow tracking needs tracking_uri or $MLFLOW_TRACKING_URI; the experiment is not logged")
        return None
    children = [r for r in (_read(p) for p in sorted(exp_dir.glob("runs/*/tracking.json"))) if r.get("uri") == uri]
    tracker = MlflowTracker(uri, log)
    tags = {"kdlab.experiment_dir": str(exp_dir.resolve()), "kdlab.kind": "experiment"}
    if not tracker.open(name, exp_dir / "tracking.json", tags,
                        experiment_id=children[0].get("experiment_id") if children else None):
        return None
    config = exp_dir / "experiment.yaml"
    if config.is_file():

        tracker.log_params(flatten(yaml.safe_load(config.read_text()) or {}))
    for child in children:
        if tracker.active:
            tracker.call("nest run", tracker.client.set_tag, child["run_id"], "mlflow.parentRunId", tracker.run_id)
    report = exp_dir / "report"
    parts = [p for p in sorted(report.iterdir()) if p.name not in REPORT_SKIP] if report.is_dir() else []
    tracker.log_artifacts([exp_dir / "manifest.json", exp_dir / "summary.json"])
    tracker.log_artifacts([p for p in parts if p.is_file()], "report")
    for folder in (p for p in parts if p.is_dir()):
        tracker.log_artifacts([folder], f"report/{folder.name}")
    tracker.close("FINISHED")
    return tracker.run_id if not tracker.failed else None


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
