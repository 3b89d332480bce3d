"""``kdlab run``: execute an experiment's plan with train-or-load runs, then write the report.

A finished run is loaded, an interrupted one resumes from its last checkpoint, so ``kdlab run`` again after a crash
or Ctrl-C picks up where it stopped. A lock file keeps two invocations from working in one experiment directory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import yaml
from torch import nn

from kdlab.config import to_dict
from kdlab.data import load_splits
from kdlab import console, files
from kdlab.engine.device import resolve_device, use_bf16
from kdlab.errors import KdlabError
from kdlab.runner import single
from kdlab.report.manifest import Manifest
from kdlab.runner.eta import Eta
from kdlab.runner.live import Live
from kdlab.runner.plan import ExperimentConfig, RunSpec, expand, validate
from kdlab.runner.preflight import check_plan
from kdlab.runner.teacher_cache import CacheStats, TeacherLogitCache, TeacherViewBank


def experiment_lock(directory: Path):
    """An exclusive, non-blocking lock on the experiment directory (released by the OS if the process dies)."""
    return files.directory_lock(directory, "running the experiment")


class ExperimentRunner:
    """Runs an experiment's plan, train-or-load, then writes the manifest and summary (the report is separate)."""

    show_eta = True  # a worker of a parallel run leaves the ETA to the driver
    def __init__(self, exp: ExperimentConfig, log: Callable[[str], None] = console.log.info, live: Live | None = None,
                 check: bool = True) -> None:
        self.live = live or Live()
        if check:  # a worker process gets an experiment the driver has validated
            validate(exp, self.live)
        self.exp = exp
        self.dir = exp.directory
        self.log = log
        self.stats = CacheStats()
        self.eta = Eta(exp.share_teacher_outputs)  # measured seconds per epoch, by kind of run
        self._caches: list[TeacherLogitCache] = []  # this seed's caches, discarded when its last run is done
        self.trained_seconds = 0.0  # time inside the training loops of the runs trained by this invocation

    def run(self) -> dict:
        if self.exp.executor == "ray" or (self.exp.workers or 1) > 1:  # kdlab.runner.parallel
            from kdlab.runner.parallel import ParallelRunner

            return ParallelRunner(self).run()
        with experiment_lock(self.dir):
            splits = load_splits(self.exp.dataset, data=self.live.data.get(self.exp.dataset.name))
            plan = expand(self.exp, splits.fingerprint, self.live)
            check_plan(plan, splits, self.live)  # files, finished runs and input sizes, before anything trains
            self._write_manifest(plan)
            started = time.perf_counter()
            failed: list[dict] = []
            for number, spec in enumerate(plan, 1):
                self._run_or_record(number, plan, spec, splits, failed)
                if self._last_of_seed(plan, number) and not self.exp.keep_teacher_cache:
                    self._discard_caches()
            if self.exp.export:
                self._export(plan, failed)
            return self.summarize(len(plan), time.perf_counter() - started, failed)

    def summarize(self, runs: int, wall: float, failed: list[dict], **extra) -> dict:
        """The invocation's summary (``summary.json``, written when it trained something: one that only loaded
        finished runs keeps the summary of the one that trained) and the log line of its teacher passes."""
        trained = self.trained_seconds
        summary = {"runs": runs, "wall_time_s": wall, "train_loop_time_s": trained,
                   "overhead_fraction": wall / trained - 1 if trained else None,
                   "teacher_cache": self.stats.as_dict(), "failed": failed, **extra}
        if trained:
            files.write_json(self.dir / "summary.json", summary)
        self.log(f"teacher forward passes: {self.stats.computed_batches} batches run, "
                 f"{self.stats.reused_batches} saved by sharing teacher outputs")
        return summary

    # -- one run ------------------------------------------------------------------------------------------------------
    def _run_or_record(self, number: int, plan: list[RunSpec], spec: RunSpec, splits, failed: list[dict]) -> None:
        """Run one; a run that fails (divergence, a bad file) is recorded and the others go on: a rerun retries it."""
        upstream = next((f for f in failed if spec.teacher_run is not None and f["key"] == spec.teacher_run.key), None)
        try:
            if upstream is not None:
                raise KdlabError(f"its teacher run {upstream['run_dir']} failed")
            self._run_one(number, plan, spec, splits)
        except KdlabError as exc:
            self.log(f"[{number}/{len(plan)}] {_describe(spec)}: failed: {exc}")
            failed.append({"key": spec.key, "run_dir": str(spec.run_dir), "error": str(exc)})

    def _run_one(self, number: int, plan: list[RunSpec], spec: RunSpec, splits) -> None:
        head = f"[{number:>{len(str(len(plan)))}}/{len(plan)}] {_describe(spec)}"
        if spec.given_checkpoint:
            self.log(f"{head}: given checkpoint {spec.given_checkpoint}")
            return
        before = _epochs_done(spec)  # epochs an interrupted earlier invocation finished
        state = _state(spec)
        if state == "done":
            self.log(f"{head}: done")
            return
        left = [s for s in plan[number - 1:] if _state(s) != "done" and not s.given_checkpoint]
        eta = self.eta.left(left, _epochs_done) if self.show_eta else None
        self.log(f"{head}: {state}" + (f", ETA experiment ~{eta / 60:.1f} min" if eta else ""))
        opened: list[TeacherLogitCache] = []
        start = time.perf_counter()
        self._train(spec, splits, opened)
        elapsed = time.perf_counter() - start
        self.trained_seconds += _trained_now(spec, before)
        for cache in opened:
            self.stats.add(cache.stats)
        self._caches.extend(opened)
        one_off = sum(cache.stats.bank_seconds for cache in opened)  # the experiment's bank, built by this run
        self.eta.record(spec, (elapsed - one_off) / max(1, spec.cfg.epochs - before))

    def _train(self, spec: RunSpec, splits, opened: list) -> None:
        """Train one run here, or over ``ddp`` processes (kdlab.runner.ddp)."""
        if self.exp.ddp > 1:
            from kdlab.runner.ddp import run_ddp

            run_ddp(self.exp, spec, self.live, opened)
            return
        single.run(spec.cfg, splits=splits, teacher_cache=self._cache_factory(spec, opened), live=self.live)

    def _cache_factory(self, spec: RunSpec, opened: list) -> Callable | None:
        """A factory the single run calls with its training loader and its frozen teacher (on the run's device,
        BatchNorm folded) when its method needs teacher logits only: the per-epoch cache of its data stream, or with
        ``teacher_views`` the teacher's bank of fixed views."""
        if spec.teacher_run is None or not self.exp.share_teacher_outputs:
            return None
        exp, teacher_run = self.exp, spec.teacher_run

        def factory(loader, teacher: nn.Module, suffix: str = "") -> TeacherLogitCache | TeacherViewBank:
            device = resolve_device(exp.device)
            bf16 = use_bf16(exp.precision, device)
            if loader.fixed_views:
                path = self.dir / "teacher_views" / f"{teacher_run.key}-{loader.views_key}.safetensors"
                cache = TeacherViewBank(path, teacher, loader, device, bf16, exp.channels_last,
                                        exp.dataset.eval_batch_size)
            else:
                directory = self.dir / "teacher_cache" / f"{teacher_run.key}-{loader.stream_key}{suffix}"
                cache = TeacherLogitCache(directory, teacher, device, bf16, exp.channels_last)
            opened.append(cache)
            return cache

        return factory

    def _discard_caches(self) -> None:
        for cache in self._caches:
            cache.discard()
        self._caches = []

    @staticmethod
    def _last_of_seed(plan: list[RunSpec], number: int) -> bool:
        return number == len(plan) or plan[number].seed != plan[number - 1].seed

    def _export(self, plan: list[RunSpec], failed: list[dict]) -> None:
        """Export, verify (and quantize) every finished baseline and student (kept when already done for its
        weights)."""
        from kdlab.export import export_run

        for spec in plan:
            if spec.role not in ("baseline", "student") or not spec.files.finished():
                continue
            try:
                export_run(spec.run_dir, self.exp.export, int8=self.exp.export_int8 and "onnx" in self.exp.export)
            except KdlabError as exc:
                self.log(f"export of {spec.run_dir.name} failed: {exc}")
                failed.append({"key": spec.key, "run_dir": str(spec.run_dir), "error": f"export: {exc}"})

    def _write_manifest(self, plan: list[RunSpec]) -> None:
        files.write_text(self.dir / "experiment.yaml", yaml.safe_dump(to_dict(self.exp), sort_keys=False))
        imports = list(dict.fromkeys(m for spec in plan for m in single.saved_imports(spec.cfg)))
        Manifest(self.exp.name, to_dict(self.exp.dataset), list(self.exp.seeds),
                 [spec.manifest_run() for spec in plan], imports, {"export": list(self.exp.export)}).write(self.dir)


def _trained_now(spec: RunSpec, epochs_before: int) -> float:
    """Seconds spent in training loops by this invocation (the epochs done before it resumed are not counted)."""
    return sum(r.get("train_time_s", 0.0) for r in spec.files.read_history()[epochs_before:])


def _describe(spec: RunSpec) -> str:
    if spec.role == "teacher":
        return f"teacher {spec.student}"
    if spec.role == "assistant":
        return f"assistant {spec.student} {spec.method} <- {spec.teacher}"
    source = f" <- {spec.teacher}" if spec.teacher else ""
    return f"{spec.role} {spec.student} {spec.method}{source} seed {spec.seed}"


def _epochs_done(spec: RunSpec) -> int:
    return spec.files.epochs_done()


def _state(spec: RunSpec) -> str:
    return spec.files.describe_state(spec.cfg.epochs)
