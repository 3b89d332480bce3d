"""How a plan runs in parallel: run groups, their dependencies, and the workers' devices and thread shares.

A *group* is a list of runs one worker executes in plan order. Every run is its own group, except the runs that
would share a teacher's cached logits: the logits-only methods distilled from one teacher (or assistant) with one
seed read the same augmented views, so they go together and the teacher's outputs are computed once for all of
them (the cache's files are also safe to share between processes: written atomically, every view checked against
its checksum). A group starts when the runs it distils from (teachers, TAKD assistants) have finished; a group
whose teacher failed fails without running. :class:`Board` keeps that state for the driver.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch

from kdlab.errors import ConfigError
from kdlab.expdir import PlannedRun
from kdlab.experiments.config import ExperimentConfig
from kdlab.experiments.plan import teacher_sources
from kdlab.methods.base import Method
from kdlab.methods.factory import method_class
from kdlab.runs.live import Live


@dataclass
class Group:
    id: int
    numbers: list[int]  # 1-based positions in the plan, in plan order
    needs: set[int] = field(default_factory=set)  # plan positions of the runs that must have finished first


def logits_only(method: str, live: Live) -> bool:
    """Whether a method reads the teacher's logits and no teacher layer (judged from its classes, before any model
    exists; a wrong guess only costs sharing, never correctness)."""
    if method in live.methods:
        parts = [method_class(live.methods[method])]
    else:
        parts = [method_class(p.strip()) for p in method.split("+")]
    if any(p.teacher_layers is not Method.teacher_layers for p in parts):
        return False
    return any(p.reads_teacher_logits is not Method.reads_teacher_logits for p in parts)


def make_groups(plan: list[PlannedRun], exp: ExperimentConfig, live: Live) -> list[Group]:
    """The plan's groups, in plan order of their first run. Runs are named by plan position, not by key: a teacher
    and a baseline with the same config have the same key but are two runs."""
    position = {id(spec): number for number, spec in enumerate(plan, 1)}
    groups: list[Group] = []
    shared: dict[tuple, Group] = {}
    for number, spec in enumerate(plan, 1):
        source = spec.teacher_run
        needs = {position[id(s)] for s in teacher_sources(spec) if not s.given_checkpoint}  # an ensemble: each member
        together = None
        if exp.share_teacher_outputs and source is not None and logits_only(spec.config.method.name, live):
            together = (source.key, spec.seed, spec.role, spec.config.dataset.batch_size)
        if together in shared:
            shared[together].numbers.append(number)
            continue
        group = Group(len(groups), [number], needs)
        groups.append(group)
        if together is not None:
            shared[together] = group
    return groups


class Board:
    """Which groups wait, which may start, which runs (by plan position) finished or failed."""

    def __init__(self, plan: list[PlannedRun], groups: list[Group], done: Iterable[int] = ()) -> None:
        self.plan = plan
        self.done: set[int] = set(done) | {n for n, s in enumerate(plan, 1) if s.given_checkpoint}
        self.failed: dict[int, str] = {}  # plan position -> error
        self.waiting: list[Group] = []
        self._next_id = len(groups)
        for group in groups:
            left = [n for n in group.numbers if n not in self.done]
            if left:
                self.waiting.append(Group(group.id, left, set(group.needs)))

    def take_ready(self) -> Optional[Group]:
        """The first waiting group whose dependencies have all finished (removed from the waiting list)."""
        for i, group in enumerate(self.waiting):
            if group.needs <= self.done:
                return self.waiting.pop(i)
        return None

    def take_blocked(self) -> list[tuple[Group, int]]:
        """Waiting groups one of whose dependencies failed, with that dependency (removed from the list)."""
        failed = set(self.failed)
        blocked = [(g, min(g.needs & failed)) for g in self.waiting if g.needs & failed]
        self.waiting = [g for g in self.waiting if not g.needs & failed]
        return blocked

    def finish(self, number: int, error: str | None = None) -> None:
        if error is None:
            self.done.add(number)
        else:
            self.failed[number] = error

    def requeue(self, numbers: list[int], needs: set[int]) -> None:
        """Runs of a group whose worker died before reaching them: a new group, first in line."""
        if numbers:
            self.waiting.insert(0, Group(self._next_id, list(numbers), set(needs)))
            self._next_id += 1

    def settled(self, numbers: Iterable[int]) -> bool:
        return all(n in self.done or n in self.failed for n in numbers)

    def left(self) -> list[int]:
        return [n for n in range(1, len(self.plan) + 1) if n not in self.done and n not in self.failed]


# -- workers: devices and threads --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Slot:
    """One worker: the GPUs it is pinned to (physical ids for CUDA_VISIBLE_DEVICES; None: not pinned) and its
    number of torch threads."""

    index: int
    devices: Optional[tuple[str, ...]]
    threads: int


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (or their indices)."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def make_slots(exp: ExperimentConfig, gpus: list[str], cores: int, log=None) -> list[Slot]:
    """Worker slots: round-robin over the visible GPUs (``ddp`` GPUs each; at most ``workers_per_device`` workers
    per GPU) when the experiment runs on CUDA, else CPU workers sharing the cores: ``cores / workers`` torch threads
    each (split again between a run's ``ddp`` ranks), so workers do not fight over OpenMP threads."""
    workers, ddp = max(1, exp.workers or 1), max(1, exp.ddp)
    on_gpu = bool(gpus) and exp.device in ("auto", "cuda")
    if not on_gpu:
        threads = exp.cpus_per_worker or max(1, cores // workers)
        return [Slot(i, None, threads) for i in range(workers)]
    if ddp > len(gpus):
        raise ConfigError(f"config key 'ddp': {ddp} processes per run need {ddp} GPUs; {len(gpus)} visible")
    capacity = max(1, len(gpus) * max(1, exp.workers_per_device) // ddp)
    if workers > capacity:
        if log is not None:
            log(f"workers={workers} capped to {capacity}: {len(gpus)} GPU(s) x workers_per_device="
                f"{exp.workers_per_device} / ddp={ddp}")
        workers = capacity
    threads = exp.cpus_per_worker or max(1, cores // workers)
    return [Slot(i, tuple(gpus[(i * ddp + j) % len(gpus)] for j in range(ddp)), threads) for i in range(workers)]
