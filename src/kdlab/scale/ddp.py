"""``kdlab run ... ddp=N``: each run of the experiment over N processes with DistributedDataParallel.

The runner starts N spawned processes for a run, as ``torchrun --nproc_per_node=N`` would: each sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and a loopback rendezvous, and runs the single-run path, which joins the process group
(NCCL on CUDA, rank r on ``cuda:r`` of the worker's GPUs; Gloo on the CPU) and shards every batch
(:mod:`kdlab.engine.distributed`). Rank 0 writes the run's files. A logits-only method's shared teacher cache is
kept per rank (each rank's views are its part of the batch). When a rank fails the others are stopped, and the run
is recorded as failed with the rank's message.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kdlab.console import log
from kdlab.engine import distributed
from kdlab.errors import KdlabError
from kdlab.data import Splits
from kdlab.expdir import PlannedRun
from kdlab.experiments.config import ExperimentConfig
from kdlab.experiments.runner import TrainOne, teacher_cache_factory, train_here
from kdlab.runs.live import Live
from kdlab.runs.teacher_cache import CacheStats
from kdlab.runs.train import run as train_single
from kdlab.scale.process import exit_with_parent, prefix_logging


@dataclass
class RankCache:
    """A rank's teacher-cache directory, as the runner keeps caches: stats to add, discard() when the seed is done."""

    directory: Path
    stats: CacheStats = field(default_factory=CacheStats)

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def trainer_for(exp: ExperimentConfig) -> TrainOne:
    """How the experiment's runs train: over ``ddp`` processes each, or in the calling process."""
    return run_ddp if exp.ddp > 1 else train_here


def run_ddp(exp: ExperimentConfig, spec: PlannedRun, live: Live, opened: list, splits: Splits | None = None) -> None:
    """Train ``spec`` over ``exp.ddp`` processes (each loads its own data: ``splits`` is not used); raises KdlabError
    (one line) when a rank fails."""
    world = exp.ddp
    ctx = multiprocessing.get_context("spawn")
    messages = ctx.SimpleQueue()
    port = _free_port()
    threads = max(1, torch.get_num_threads() // world)
    ranks = [ctx.Process(target=_rank_main, args=(rank, world, port, exp, spec, live, threads, messages),
                         name=f"kdlab-rank-{rank}") for rank in range(world)]
    for process in ranks:
        process.start()
    try:
        _join(ranks)
    finally:
        for process in ranks:
            if process.is_alive():
                process.kill()
            process.join()
    errors, caches = [], []
    while not messages.empty():
        kind, rank, payload = messages.get()
        if kind == "error":
            errors.append((rank, payload))
        else:
            caches += [RankCache(Path(d), CacheStats(**stats)) for d, stats in payload]
    opened.extend(caches)
    if errors:
        raise KdlabError(min(errors)[1])  # rank 0's message when it has one
    bad = next((p for p in ranks if p.exitcode != 0), None)
    if bad is not None:
        raise KdlabError(f"ddp: {bad.name} exited with code {bad.exitcode} (its messages are above)")


def _join(ranks: list) -> None:
    """Wait for every rank; when one ends with an error, stop the others (they would wait for it forever)."""
    alive = list(ranks)
    while alive:
        multiprocessing.connection.wait([p.sentinel for p in alive])
        for process in [p for p in alive if not p.is_alive()]:
            alive.remove(process)
            if process.exitcode != 0:
                for other in alive:
                    other.kill()
                return


def _rank_main(rank: int, world: int, port: int, exp: ExperimentConfig, spec: PlannedRun, live: Live, threads: int,
               messages) -> None:
    exit_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the launching process's: it stops the ranks
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS=str(threads),
                      KDLAB_THREADS=str(threads))
    torch.set_num_threads(threads)
    prefix_logging(f"[rank {rank}] ")
    opened: list = []
    ranked = teacher_cache_factory(exp, spec, opened, suffix=f"-r{rank}of{world}")
    try:
        train_single(spec.config, teacher_cache=ranked, live=live)
        messages.put(("ok", rank, [(str(c.directory), c.stats.as_dict()) for c in opened]))
    except KdlabError as exc:
        messages.put(("error", rank, str(exc)))
        log.info(f"failed: {exc}")
        raise SystemExit(1) from None  # the other ranks are stopped rather than left waiting in a collective
    finally:
        distributed.shutdown()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
