"""Mid-epoch checkpoints: when to write one, what of the running epoch it holds, and how an epoch resumes at a batch.

An epoch of an ImageNet-size folder streamed from disk can last hours; the trainer then also checkpoints every
``EngineOptions.checkpoint_every_s`` seconds within it. Such a checkpoint holds, besides what an epoch-end one holds
(weights, optimizer, scheduler, RNG, history), an :class:`EpochProgress`: the epoch, the batches done and the
running sums the epoch's metrics row is computed from. Since every view is a pure function of (seed, epoch), a run
killed after it and resumed ends with exactly the weights and metrics of an uninterrupted run:

- a loader whose views are such a function and whose ``set_epoch`` takes ``start_batch`` (the streamed
  :class:`kdlab.data.BatchLoader`) starts at the batch, without decoding the ones before it;
- any other (a user Dataset's :class:`kdlab.data.custom.DatasetLoader`, whose transforms may draw from torch's RNG)
  replays the epoch's first batches and drops them, so its workers' and transforms' draws are those of the
  uninterrupted epoch;
- torch's global RNG is set back to its saved state at the point the uninterrupted epoch reached it: after the first
  batch is fetched (a DataLoader draws its workers' base seed from the global RNG as it starts) or after the
  replayed batches.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor

from kdlab.engine import distributed

CHECKPOINT_EVERY_S = 600.0  # default of EngineOptions.checkpoint_every_s: a mid-epoch checkpoint every 10 minutes


@dataclass
class EpochProgress:
    """The running part of epoch ``epoch`` (0-based) after ``batch`` of its batches: the loss sums and the correct
    and sample counts the epoch's metrics row is made of, its first learning rate and the training time so far."""

    epoch: int
    batch: int = 0
    sums: dict[str, Tensor] = field(default_factory=dict)
    correct: Optional[Tensor] = None
    seen: int = 0
    elapsed: float = 0.0
    lr: Optional[float] = None

    def as_state(self, dist: Optional[distributed.Dist]) -> dict:
        """Plain containers and CPU tensors (``torch.load(weights_only=True)`` reads them). Under DDP the sums are
        those of every rank (the main process writes them; it alone resumes with them, see :meth:`from_state`)."""
        correct = self.correct if self.correct is not None else torch.zeros(())
        sums, correct, seen = distributed.reduce_epoch(dict(self.sums), correct, self.seen, dist)
        return {"epoch": self.epoch, "batch": self.batch, "sums": {k: v.detach().cpu() for k, v in sums.items()},
                "correct": correct.detach().cpu(), "seen": seen, "elapsed": self.elapsed, "lr": self.lr}

    @classmethod
    def from_state(cls, state: dict, device: torch.device, dist: Optional[distributed.Dist]) -> "EpochProgress":
        """The saved progress on ``device``; under DDP only rank 0 starts from the (all-rank) sums, the other ranks
        from zero, so the epoch-end reduction counts every sample once."""
        own = dist is None or dist.is_main
        zero = (lambda t: t.to(device)) if own else (lambda t: torch.zeros_like(t, device=device))
        return cls(epoch=int(state["epoch"]), batch=int(state["batch"]),
                   sums={k: zero(v) for k, v in state["sums"].items()}, correct=zero(state["correct"]),
                   seen=int(state["seen"]) if own else 0, elapsed=float(state["elapsed"]), lr=state.get("lr"))


class CheckpointClock:
    """Says when a mid-epoch checkpoint is due: ``every_s`` seconds after the last checkpoint (or the clock's start);
    0 turns mid-epoch checkpoints off. Under DDP the ranks agree (one all-reduce per step), as every rank must take
    part in the checkpoint's reduction of the running sums; they ask every :data:`AGREE_EVERY` steps only."""

    AGREE_EVERY = 16

    def __init__(self, every_s: float, dist: Optional[distributed.Dist] = None,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.every_s, self.dist, self.now = every_s, dist, now
        self.last = now()

    def due(self, step: int) -> bool:
        """Whether to checkpoint after step ``step`` (the same answer on every rank)."""
        if self.every_s <= 0:
            return False
        if self.dist is None or not self.dist.enabled:
            return self.now() - self.last >= self.every_s
        if step % self.AGREE_EVERY:
            return False
        return distributed.any_rank(self.now() - self.last >= self.every_s, self.dist)

    def reset(self) -> None:
        self.last = self.now()


def epoch_batches(loader: Any, epoch: int, start: int, restore_rng: Callable[[], None] | None) -> Iterator:
    """The epoch's batches from batch ``start`` on (see the module docstring); ``restore_rng`` (a resumed epoch:
    set torch's RNG back to the checkpoint's) is called where the uninterrupted epoch had that RNG state."""
    if not start:
        loader.set_epoch(epoch)
        if restore_rng is not None:
            restore_rng()
        yield from loader
        return
    if getattr(loader, "stream_key", None) is not None and _takes_start_batch(loader):
        loader.set_epoch(epoch, start_batch=start)
        batches = iter(loader)
        first = next(batches, None)  # starts the loader's workers: the global RNG draws of an epoch's start
        if restore_rng is not None:
            restore_rng()
        if first is not None:
            yield first
        yield from batches
        return
    loader.set_epoch(epoch)
    batches = iter(loader)
    for _ in range(start):  # the same batches (and RNG draws) as the uninterrupted epoch; dropped
        next(batches, None)
    if restore_rng is not None:
        restore_rng()
    yield from batches


def _takes_start_batch(loader: Any) -> bool:
    try:
        return "start_batch" in inspect.signature(loader.set_epoch).parameters
    except (TypeError, ValueError):
        return False


def rng_state() -> dict:
    """torch's global CPU and CUDA RNG states, as a checkpoint stores them."""
    return {"rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    """Set torch's global RNGs back to a checkpoint's :func:`rng_state`."""
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
