"""``kdlab run``: execute an experiment's plan with train-or-load runs, one after another.

A finished run is loaded, an interrupted one resumes from its last checkpoint, so ``kdlab run`` again after a crash
or Ctrl-C picks up where it stopped. A lock file keeps two invocations from working in one experiment directory.

The public steps here (:meth:`ExperimentRunner.prepare`, :meth:`ExperimentRunner.run_or_record`,
:meth:`ExperimentRunner.summarize`, :func:`teacher_cache_factory`, :func:`describe`, :func:`run_state`) are what every
executor calls: the sequential :meth:`ExperimentRunner.run`, and :mod:`kdlab.scale`'s workers, Ray tasks and DDP
ranks. How one run trains is a parameter (``train_one``), so that a face can run each over several processes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import yaml
from torch import nn

from kdlab import console, files
from kdlab.config import to_dict
from kdlab.data import Splits, load_splits
from kdlab.engine.device import resolve_device, use_bf16
from kdlab.errors import KdlabError
from kdlab.expdir import ExperimentDir, Manifest, PlannedRun
from kdlab.experiments.config import ExperimentConfig
from kdlab.experiments.eta import Eta
from kdlab.experiments.plan import expand, teacher_sources, validate
from kdlab.experiments.preflight import check_plan
from kdlab.plugins import module_names
from kdlab.report.live import write_live
from kdlab.runs.identity import saved_imports
from kdlab.runs.live import Live
from kdlab.runs.teacher_bank import TeacherViewBank
from kdlab.runs.teacher_cache import CacheStats, TeacherLogitCache
from kdlab.runs.train import run as train_single


class TrainOne(Protocol):
    """How one planned run trains: here, or over DDP processes (:func:`kdlab.scale.ddp.run_ddp`). ``opened`` collects
    the teacher caches it opened (their stats are added, and they are discarded once their seed is done)."""

    def __call__(self, exp: ExperimentConfig, spec: PlannedRun, live: Live, opened: list, splits: Splits) -> None: ...


def train_here(exp: ExperimentConfig, spec: PlannedRun, live: Live, opened: list, splits: Splits) -> None:
    """Train one run in this process, sharing the teacher's outputs as the experiment says."""
    train_single(spec.config, splits=splits, teacher_cache=teacher_cache_factory(exp, spec, opened), live=live)


def experiment_lock(directory: Path):
    """An exclusive, non-blocking lock on the experiment directory (released by the OS if the process dies)."""
    return files.directory_lock(directory, "running the experiment")


@dataclass
class Prepared:
    """An experiment ready to run: its data and its plan (manifest written)."""

    splits: Splits
    plan: list[PlannedRun]


class ExperimentRunner:
    """Runs an experiment's plan, train-or-load, then writes the manifest and summary (the report is separate)."""

    def __init__(self, exp: ExperimentConfig, log: Callable[[str], None] = console.log.info, live: Live | None = None,
                 check: bool = True, train_one: TrainOne = train_here, show_eta: bool = True) -> None:
        self.live = live or Live()
        if check:  # a worker process gets an experiment the driver has validated
            validate(exp, self.live)
        self.live.trusted = named_modules(exp)
        self.exp = exp
        self.dir = exp.directory
        self.log = log
        self.train_one = train_one
        self.show_eta = show_eta  # a worker of a parallel run leaves the ETA to the driver
        self.stats = CacheStats()
        self.eta = Eta(exp.share_teacher_outputs)  # measured seconds per epoch, by kind of run
        self.caches: list = []  # this seed's teacher caches, discarded when its last run is done
        self.trained_seconds = 0.0  # time inside the training loops of the runs trained by this invocation

    def run(self) -> dict:
        """Every run of the plan in this process, one after another; returns the summary."""
        with experiment_lock(self.dir):
            ready = self.prepare(check=True)
            started = time.perf_counter()
            failed: list[dict] = []
            for number, spec in enumerate(ready.plan, 1):
                self.run_or_record(number, ready.plan, spec, ready.splits, failed)
                write_live(self.dir)
                if last_of_seed(ready.plan, number) and not self.exp.keep_teacher_cache:
                    self.discard_caches()
            if self.exp.export:
                self.export(ready.plan, failed)
            return self.summarize(len(ready.plan), time.perf_counter() - started, failed)

    def prepare(self, check: bool = True) -> Prepared:
        """Load the data, expand the plan, check its files and architectures (``check``), write the manifest."""
        splits = load_splits(self.exp.dataset, data=self.live.data.get(self.exp.dataset.name))
        plan = expand(self.exp, splits.fingerprint, self.live)
        if check:
            check_plan(plan, splits, self.live)  # files, finished runs and input sizes, before anything trains
        write_manifest(self.exp, plan)
        write_live(self.dir)  # report/live.html: runs done, running and waiting, while the experiment goes on
        return Prepared(splits, plan)

    def summarize(self, runs: int, wall: float, failed: list[dict], **extra) -> dict:
        """The invocation's summary (``summary.json``, written when it trained something: one that only loaded
        finished runs keeps the summary of the one that trained) and the log line of its teacher passes."""
        trained = self.trained_seconds
        summary = {"runs": runs, "wall_time_s": wall, "train_loop_time_s": trained,
                   "overhead_fraction": wall / trained - 1 if trained else None,
                   "teacher_cache": self.stats.as_dict(), "failed": failed, **extra}
        if trained:
            files.write_json(ExperimentDir(self.dir).summary, summary)
        self.log(f"teacher forward passes: {self.stats.computed_batches} batches run, "
                 f"{self.stats.reused_batches} saved by sharing teacher outputs")
        return summary

    def run_or_record(self, number: int, plan: list[PlannedRun], spec: PlannedRun, splits: Splits,
                      failed: list[dict]) -> None:
        """Run one; a run that fails (divergence, a bad file) is recorded and the others go on: a rerun retries it."""
        sources = {s.key for s in teacher_sources(spec)}  # its teacher run, or each member of its ensemble
        upstream = next((f for f in failed if f["key"] in sources), None)
        try:
            if upstream is not None:
                raise KdlabError(f"its teacher run {upstream['run_dir']} failed")
            self._run_one(number, plan, spec, splits)
        except KdlabError as exc:
            self.log(f"[{number}/{len(plan)}] {describe(spec)}: failed: {exc}")
            failed.append({"key": spec.key, "run_dir": str(spec.run_dir), "error": str(exc)})

    def _run_one(self, number: int, plan: list[PlannedRun], spec: PlannedRun, splits: Splits) -> None:
        head = f"[{number:>{len(str(len(plan)))}}/{len(plan)}] {describe(spec)}"
        if spec.given_checkpoint:
            self.log(f"{head}: given checkpoint {spec.given_checkpoint}")
            return
        before = epochs_done(spec)  # epochs an interrupted earlier invocation finished
        state = run_state(spec)
        if state == "done":
            self.log(f"{head}: done")
            return
        left = [s for s in plan[number - 1:] if run_state(s) != "done" and not s.given_checkpoint]
        eta = self.eta.left(left, epochs_done) if self.show_eta else None
        self.log(f"{head}: {state}" + (f", ETA experiment ~{eta / 60:.1f} min" if eta else ""))
        opened: list = []
        start = time.perf_counter()
        self.train_one(self.exp, spec, self.live, opened, splits)
        elapsed = time.perf_counter() - start
        self.trained_seconds += _trained_now(spec, before)
        for cache in opened:
            self.stats.add(cache.stats)
        self.caches.extend(opened)
        one_off = sum(getattr(cache.stats, "bank_seconds", 0.0) for cache in opened)  # the bank, built by this run
        self.eta.record(spec, (elapsed - one_off) / max(1, spec.config.epochs - before))

    def discard_caches(self) -> None:
        for cache in self.caches:
            cache.discard()
        self.caches = []

    def export(self, plan: list[PlannedRun], failed: list[dict]) -> None:
        """Export, verify (and quantize) every finished baseline and student (kept when already done for its
        weights)."""
        from kdlab.export import export_run  # onnx and friends load only for experiments that export

        for spec in plan:
            if spec.role not in ("baseline", "student") or not spec.files.finished():
                continue
            try:
                export_run(spec.run_dir, self.exp.export, int8=self.exp.export_int8 and "onnx" in self.exp.export)
            except KdlabError as exc:
                self.log(f"export of {spec.run_dir.name} failed: {exc}")
                failed.append({"key": spec.key, "run_dir": str(spec.run_dir), "error": f"export: {exc}"})


def teacher_cache_factory(exp: ExperimentConfig, spec: PlannedRun, opened: list,
                          suffix: str = "") -> Callable | None:
    """A factory the single run calls with its training loader and its frozen teacher (on the run's device,
    BatchNorm folded) when its method needs teacher logits only: the per-epoch cache of its data stream, or with
    ``teacher_views`` the teacher's bank of fixed views (a memory-mapped directory that every seed, worker process
    and Ray task reads; :mod:`kdlab.runs.teacher_bank`). ``suffix`` tells DDP ranks' caches apart."""
    if spec.teacher_run is None or not exp.share_teacher_outputs:
        return None
    teacher_run, layout = spec.teacher_run, ExperimentDir(exp.directory)

    def factory(loader: Any, teacher: nn.Module) -> TeacherLogitCache | TeacherViewBank:
        device = resolve_device(exp.device)
        bf16 = use_bf16(exp.precision, device)
        cache: TeacherLogitCache | TeacherViewBank
        if loader.fixed_views:
            path = layout.teacher_views / f"{teacher_run.key}-{loader.views_key}"
            cache = TeacherViewBank(path, teacher, loader, device, bf16, exp.channels_last,
                                    exp.dataset.eval_batch_size, teacher_id=teacher_run.key)
        else:
            directory = layout.teacher_cache / f"{teacher_run.key}-{loader.stream_key}{suffix}"
            cache = TeacherLogitCache(directory, teacher, device, bf16, exp.channels_last)
        opened.append(cache)
        return cache

    return factory


def named_modules(exp: ExperimentConfig) -> list[str]:
    """The plug-in modules the experiment itself names (its ``imports`` and its models' ``module:Name``): its runs
    may import them when they load each other's checkpoints (a student its teacher's)."""
    names = [m.name for m in (*exp.teachers, *exp.assistants, *exp.students)]
    return list(dict.fromkeys([*exp.imports, *module_names(names)]))


def write_manifest(exp: ExperimentConfig, plan: list[PlannedRun]) -> None:
    """``experiment.yaml`` and ``manifest.json``: what the report and a later invocation read."""
    layout = ExperimentDir(exp.directory)
    files.write_text(layout.config, yaml.safe_dump(to_dict(exp), sort_keys=False))
    imports = list(dict.fromkeys(m for spec in plan if spec.cfg is not None for m in saved_imports(spec.cfg)))
    Manifest(exp.name, to_dict(exp.dataset), list(exp.seeds), list(plan), imports,
             {"export": list(exp.export)}).write(exp.directory)


def last_of_seed(plan: list[PlannedRun], number: int) -> bool:
    return number == len(plan) or plan[number].seed != plan[number - 1].seed


def _trained_now(spec: PlannedRun, epochs_before: int) -> float:
    """Seconds spent in training loops by this invocation (the epochs done before it resumed are not counted)."""
    return sum(r.get("train_time_s", 0.0) for r in spec.files.read_history()[epochs_before:])


def describe(spec: PlannedRun) -> str:
    """A run as the log names it."""
    if spec.role == "teacher":
        return f"teacher {spec.student}"
    if spec.role == "assistant":
        return f"assistant {spec.student} {spec.method} <- {spec.teacher}"
    source = f" <- {spec.teacher}" if spec.teacher else ""
    return f"{spec.role} {spec.student} {spec.method}{source} seed {spec.seed}"


def epochs_done(spec: PlannedRun) -> int:
    return spec.files.epochs_done()


def run_state(spec: PlannedRun) -> str:
    """``done``, or how far an unfinished run got (see :meth:`kdlab.rundir.RunDir.describe_state`)."""
    return spec.files.describe_state(spec.config.epochs)
