"""``kdlab run ... workers=N`` / ``executor=ray``: the plan's runs at once, in worker processes or as Ray tasks.

The driver (this module) holds the experiment lock, expands the plan, writes the manifest, splits the plan into
run groups (:mod:`kdlab.scale.groups`) and hands every group whose teachers have finished to a free
worker: a local process pinned to its GPU(s) and thread share (:class:`LocalPool`), or a Ray task with its CPU/GPU
resources (:mod:`kdlab.scale.ray_pool`). Workers run each run through the sequential runner's own path
(:mod:`kdlab.scale.worker`), so train-or-load by key, exact resume and failure records are the same.

A run that fails is recorded and the others go on; a worker that dies (killed, out of memory) fails the run it
was in, its group's other runs go to another worker; a killed driver takes its local workers with it, and
``kdlab run`` again resumes every interrupted run and retries the failed ones.
"""

from __future__ import annotations

import pickle
import shutil
import time
from pathlib import Path

from kdlab.errors import KdlabError
from kdlab.expdir import PlannedRun
from kdlab.experiments.runner import ExperimentRunner, describe, epochs_done, experiment_lock, run_state
from kdlab.report.live import write_live
from kdlab.runs.teacher_cache import CacheStats
from kdlab.scale.groups import Board, Group, cpu_cores, make_groups, make_slots, visible_gpus
from kdlab.scale.local_pool import LocalPool
from kdlab.scale.ray_pool import RayPool
from kdlab.scale.worker import GroupTask, RunOutcome, Storage, write_marker


class ParallelRunner:
    """The driver of a parallel experiment; ``run()`` returns the sequential runner's summary (plus the executor)."""

    def __init__(self, base: ExperimentRunner) -> None:
        self.base, self.exp, self.live, self.log = base, base.exp, base.live, base.log
        self.failed: list[dict] = []
        self.workers: int | None = 1
        self._caches: dict[tuple, set[str]] = {}  # (teacher key, seed) -> teacher-cache directories opened

    def run(self) -> dict:
        with experiment_lock(self.base.dir):
            started = time.perf_counter()
            pool = self._local_pool() if self.exp.executor == "local" else None  # workers import while we plan
            try:
                plan, board, storage = self._plan()
            except BaseException:
                if pool is not None:
                    pool.close(force=True)
                raise
            if board.waiting:
                self._execute(plan, board, storage, pool)
            elif pool is not None:
                pool.close(force=True)  # nothing to run: they were only importing
            return self.base.summarize(len(plan), time.perf_counter() - started, self.failed,
                                       executor=self.exp.executor, workers=self.workers)

    def _plan(self) -> tuple[list[PlannedRun], Board, Storage]:
        """The plan (manifest written), its board (finished runs known), the storage marker."""
        plan = self.base.prepare(check=False).plan
        storage = write_marker(self.base.dir)
        done = [n for n, s in enumerate(plan, 1) if run_state(s) == "done"]
        board = Board(plan, make_groups(plan, self.exp, self.live), done)
        for number, spec in enumerate(plan, 1):
            if number in board.done:
                self.log(f"[{number}/{len(plan)}] {describe(spec)}: "
                         f"{'given checkpoint' if spec.given_checkpoint else 'done'}")
        return plan, board, storage

    def _execute(self, plan: list[PlannedRun], board: Board, storage: Storage, pool=None) -> None:
        if pool is None:
            pool = RayPool(self.exp, self.log)
        self.workers = pool.size  # None: as many Ray tasks as the cluster's resources allow
        self.log(f"running {sum(len(g.numbers) for g in board.waiting)} runs in {pool.describe()}")
        try:
            self._loop(pool, plan, board, storage)
        except BaseException:
            pool.close(force=True)
            raise
        pool.close()

    def _local_pool(self) -> LocalPool:
        try:
            pickle.dumps(self.live)
        except Exception as exc:  # noqa: BLE001 - whatever pickling raises, the message is the same
            raise KdlabError(f"workers={self.exp.workers} runs in separate processes, which need the experiment's "
                             f"Python objects to pickle ({type(exc).__name__}: {exc}); define them in an importable "
                             f"module, use executor=ray (cloudpickle), or workers=1") from None
        return LocalPool(make_slots(self.exp, visible_gpus(), cpu_cores(), self.log))

    def _loop(self, pool, plan: list[PlannedRun], board: Board, storage: Storage) -> None:
        running: dict[int, Group] = {}
        current: dict[int, int] = {}  # group id -> the plan number its worker is on
        while True:
            for group, source in board.take_blocked():
                for number in group.numbers:
                    self._record(board, plan, number, f"its teacher run {plan[source - 1].run_dir} failed")
            while pool.has_free():
                ready = board.take_ready()
                if ready is None:
                    break
                pool.submit(GroupTask(ready.id, ready.numbers, plan, self.exp, self.live, storage, pool.threads))
                running[ready.id] = ready
            if not running:
                for group in board.waiting:  # cannot happen: every dependency is a run of the plan
                    for number in group.numbers:
                        self._record(board, plan, number, "not run: the runs it depends on never finished")
                return
            for event in pool.wait():
                self._handle(event, plan, board, running, current, pool)

    def _handle(self, event: tuple, plan, board: Board, running: dict, current: dict, pool) -> None:
        kind, group_id, payload = event
        if kind == "started":
            current[group_id] = payload
        elif kind == "run":
            self._outcome(payload, plan, board)
        elif kind == "group":
            running.pop(group_id, None)
        elif kind == "storage":
            raise KdlabError(payload)
        elif kind == "died":
            self._died(running.pop(group_id), current.get(group_id), payload, plan, board, pool)

    def _died(self, group: Group, number: int | None, reason: str, plan, board: Board, pool) -> None:
        """A worker died: the run it was in fails (kdlab run again resumes it); its group's other runs go on.

        A run whose files say it finished counts as finished, whatever the worker managed to report: it may die
        after writing a run's result and before telling the driver, and a Ray task reports at its end only."""
        left = [n for n in group.numbers if not board.settled([n])]
        for n in list(left):
            if run_state(plan[n - 1]) == "done":
                board.finish(n)
                left.remove(n)
        if pool.name == "ray":  # no per-run reports: every run not finished was in the dead task
            for n in left:
                self._record(board, plan, n, reason)
            return
        if number not in board.done:  # (if it is, it died after finishing its run, before starting the next)
            number = number if number in left else (left[0] if left else None)  # no endless retry
            if number is not None:
                self._record(board, plan, number, f"{reason} while it ran")
                left.remove(number)
        board.requeue(left, group.needs)

    def _outcome(self, outcome: RunOutcome, plan: list[PlannedRun], board: Board) -> None:
        base = self.base
        base.stats.add(CacheStats(**outcome.stats))
        base.trained_seconds += outcome.trained_seconds
        base.eta.epoch_seconds.update(outcome.epoch_seconds)
        spec = plan[outcome.number - 1]
        if outcome.error is None:
            board.finish(outcome.number)
        else:
            self._record(board, plan, outcome.number, outcome.error, logged=True)
        if spec.teacher_run is not None:
            self._caches.setdefault((spec.teacher_run.key, spec.seed), set()).update(outcome.caches)
        self._discard_caches(plan, board, spec)
        self._progress(plan, board)
        write_live(self.base.dir)

    def _record(self, board: Board, plan: list[PlannedRun], number: int, error: str, logged: bool = False) -> None:
        spec = plan[number - 1]
        board.finish(number, error)
        self.failed.append({"key": spec.key, "run_dir": str(spec.run_dir), "error": error})
        if not logged:
            self.log(f"[{number}/{len(plan)}] {describe(spec)}: failed: {error}")

    def _discard_caches(self, plan: list[PlannedRun], board: Board, spec: PlannedRun) -> None:
        """A teacher's cached logits for a seed go once every run of that seed distilled from it has settled."""
        if self.exp.keep_teacher_cache or spec.teacher_run is None:
            return
        key = (spec.teacher_run.key, spec.seed)
        users = [n for n, s in enumerate(plan, 1) if s.teacher_run is not None and (s.teacher_run.key, s.seed) == key]
        if board.settled(users):
            for directory in self._caches.pop(key, set()):
                shutil.rmtree(Path(directory), ignore_errors=True)

    def _progress(self, plan: list[PlannedRun], board: Board) -> None:
        left = [plan[n - 1] for n in board.left()]
        eta = self.base.eta.left(left, epochs_done)
        eta = eta / max(1, self.workers or 1) if eta else None
        self.log(f"{len(plan) - len(left)}/{len(plan)} runs settled ({len(board.failed)} failed)"
                 + (f", ETA experiment ~{eta / 60:.1f} min" if eta else ""))
