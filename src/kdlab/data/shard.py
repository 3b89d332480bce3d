"""A rank's part of a global batch, for one run over several processes (see ``kdlab.engine.distributed``)."""

from __future__ import annotations


def rank_slice(start: int, stop: int, shard: tuple[int, int]) -> slice:
    """Rank ``shard[0]`` of ``shard[1]``'s contiguous part of ``[start, stop)``: ranks in order, sizes differing by at
    most one, the union exactly ``[start, stop)``."""
    rank, world = shard
    size, extra = divmod(stop - start, world)
    first = start + rank * size + min(rank, extra)
    return slice(first, first + size + (1 if rank < extra else 0))
