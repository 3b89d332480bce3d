"""What a worker does: run one run group (kdlab.scale.groups) of an experiment's plan, run by run.

The same code serves a local worker process (:func:`serve`, one per slot, fed groups over a pipe) and a Ray task
(:func:`ray_task`). Each run goes through the sequential runner's own path (train-or-load by key, exact resume, the
shared teacher-logit cache, a failure recorded rather than raised), so everything that holds for one process holds
here. A worker first checks that it sees the experiment directory the driver wrote (a marker file with a random
token): on a cluster the directory must be on storage every node mounts at the same path.
"""

from __future__ import annotations

import gc
import json
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.util
import os
import secrets
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from kdlab import files
from kdlab.config import to_dict
from kdlab.console import ensure_logging, log
from kdlab.data import load_splits
from kdlab.errors import StorageError
from kdlab.engine.device import resolve_device
from kdlab.engine.host import THREADS_ENV
from kdlab.report.collect import TestData, evaluate_run
from kdlab.experiments.runner import ExperimentRunner
from kdlab.experiments.config import ExperimentConfig
from kdlab.runs.live import Live
from kdlab.expdir import PlannedRun
from kdlab.scale.ddp import trainer_for
from kdlab.scale.groups import Slot
from kdlab.scale.process import exit_with_parent, prefix_logging

MARKER = ".kdlab-storage"


@dataclass(frozen=True)
class Storage:
    """How a worker checks it sees the driver's experiment directory."""

    marker: str  # absolute path of the marker file in the experiment directory
    token: str  # what the driver wrote in it
    cwd: str  # the driver's working directory: relative paths in the configs are relative to it


def write_marker(directory: Path) -> Storage:
    token = secrets.token_hex(16)
    path = Path(directory).resolve() / MARKER
    files.write_text(path, token)
    return Storage(str(path), token, os.getcwd())


def check_storage(storage: Storage) -> None:
    """Work in the driver's directory, and make sure the experiment directory is the driver's; else StorageError."""
    where = f"worker on {socket.gethostname()}"
    try:
        os.chdir(storage.cwd)
        seen = Path(storage.marker).read_text()
    except OSError:
        seen = None
    if seen != storage.token:
        raise StorageError(f"the {where} does not see the experiment directory {Path(storage.marker).parent} (no "
                           f"{MARKER} marker with the driver's token, or no {storage.cwd}): put the experiment on "
                           f"storage every node mounts at the same path (NFS, a shared volume)")


@dataclass
class GroupTask:
    group: int
    numbers: list[int]  # 1-based plan positions to run, in order
    plan: list[PlannedRun]
    exp: ExperimentConfig
    live: Live
    storage: Storage
    threads: int  # torch threads for these runs


@dataclass
class RunOutcome:
    number: int
    key: str
    error: str | None  # None: finished (trained, resumed or loaded)
    stats: dict  # teacher-cache counts
    trained_seconds: float
    epoch_seconds: dict
    caches: list[str]  # teacher-cache directories the run opened


Emit = Callable[[tuple], None]


def run_group(task: GroupTask, emit: Emit, memo: dict) -> None:
    """Run the group's runs in order, emitting ``("started", group, number)`` and ``("run", group, RunOutcome)``."""
    check_storage(task.storage)
    torch.set_num_threads(task.threads)
    os.environ[THREADS_ENV] = str(task.threads)  # this worker's share of the cores, not a choice made from the load
    splits = _splits(task, memo)
    for number in task.numbers:
        spec = task.plan[number - 1]
        emit(("started", task.group, number))
        # the sequential runner's per-run path (the driver has validated the experiment and logs the ETA)
        runner = ExperimentRunner(task.exp, log=log.info, live=task.live, check=False, train_one=trainer_for(task.exp),
                                  show_eta=False)
        failed: list[dict] = []
        try:
            runner.run_or_record(number, task.plan, spec, splits, failed)
        except Exception as exc:  # noqa: BLE001 - a bug or an out-of-memory fails this run, not the experiment
            log.exception(f"[{number}/{len(task.plan)}] {spec.config.name}: failed")
            failed.append({"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"})
        if not failed:
            _prepare_report(task, spec, splits)
        emit(("run", task.group, RunOutcome(number, spec.key, failed[0]["error"] if failed else None,
                                            runner.stats.as_dict(), runner.trained_seconds,
                                            dict(runner.eta.epoch_seconds),
                                            [str(c.directory) for c in runner.caches])))
        del runner
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _prepare_report(task: GroupTask, spec: PlannedRun, splits) -> None:
    """Evaluate a finished run on the test split as the report does (it caches that per run, keyed on the weights and
    the test data), here, where the data is loaded and a core is the worker's, instead of in the driver at the end.
    A failure only leaves the evaluation to the report."""
    if spec.given_checkpoint or not spec.files.finished():
        return
    try:
        data = TestData(to_dict(task.exp.dataset), resolve_device(task.exp.device),
                        objects=task.live.data.get(task.exp.dataset.name), models=task.live.models, splits=splits,
                        imports=task.exp.imports)
        evaluate_run(spec, spec.files.read_result() or {}, data, log=lambda message: None)
    except Exception as exc:  # noqa: BLE001 - the report evaluates the run itself, and says what fails
        log.warning(f"{spec.run_dir.name}: not evaluated for the report here ({type(exc).__name__}: {exc})")


def _splits(task: GroupTask, memo: dict):
    """The experiment's data, loaded once per worker process (the last dataset only)."""
    key = json.dumps(to_dict(task.exp.dataset), sort_keys=True) + f"|{task.exp.dataset.name in task.live.data}"
    if key not in memo:
        memo.clear()
        memo[key] = load_splits(task.exp.dataset, data=task.live.data.get(task.exp.dataset.name))
    return memo[key]


# -- a local worker process -------------------------------------------------------------------------------------------
def serve(conn: multiprocessing.connection.Connection, slot: Slot) -> None:
    """A worker process: pinned to its slot's GPUs and thread share, runs the groups the driver sends until None."""
    exit_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's: it stops the workers itself
    if slot.devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(slot.devices)  # before CUDA starts in this process
    os.environ["OMP_NUM_THREADS"] = str(slot.threads)
    os.environ.setdefault("KDLAB_NO_PROGRESS", "1")  # one progress bar per worker would garble the terminal
    torch.set_num_threads(slot.threads)
    prefix_logging(f"[worker {slot.index}] ")
    memo: dict = {}
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            task = None
        if task is None:
            _leave()
        try:
            run_group(task, conn.send, memo)
            conn.send(("group", task.group, None))
        except StorageError as exc:
            conn.send(("storage", task.group, str(exc)))


def _leave() -> None:
    """End this worker now: its runs' files are written, and tearing down an interpreter that loaded torch and the
    experiment's data takes most of a second, which the driver would wait for before its report."""
    # what a process of multiprocessing runs at its end (finalizers, locks): the standard library's own, unexported
    multiprocessing.util._exit_function()  # type: ignore[attr-defined]
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def ray_task(task: GroupTask) -> list[tuple]:
    """A Ray task: the group's events, as :func:`serve` would have sent them."""
    os.environ.setdefault("KDLAB_NO_PROGRESS", "1")
    ensure_logging(application=True)
    events: list[tuple] = []
    try:
        run_group(task, events.append, {})
        events.append(("group", task.group, None))
    except StorageError as exc:
        events.append(("storage", task.group, str(exc)))
    return events
