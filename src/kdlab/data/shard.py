"""An epoch's order of samples: drawn from a generator seeded by (seed, epoch), and split between the processes of
one run (each rank takes its part of every global batch, see ``kdlab.engine.distributed``)."""

from __future__ import annotations

import hashlib

import torch


def epoch_generator(seed: int, epoch: int, stream: str = "stream") -> torch.Generator:
    """A CPU generator for (seed, epoch), hashed so nearby pairs give unrelated streams."""
    digest = hashlib.sha256(f"kdlab-{stream}:{seed}:{epoch}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def rank_slice(start: int, stop: int, shard: tuple[int, int]) -> slice:
    """Rank ``shard[0]`` of ``shard[1]``'s contiguous part of ``[start, stop)``: ranks in order, sizes differing by at
    most one, the union exactly ``[start, stop)``."""
    rank, world = shard
    size, extra = divmod(stop - start, world)
    first = start + rank * size + min(rank, extra)
    return slice(first, first + size + (1 if rank < extra else 0))
