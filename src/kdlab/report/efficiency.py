"""What a model costs: parameters, forward FLOPs per image, checkpoint size and CPU latency.

FLOPs are PyTorch's own count (``torch.utils.flop_counter``): a multiply-add is 2 FLOPs, and only matmuls and
convolutions (and attention) are counted: normalization, activations and pooling are not, as in most papers' tables.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdlab.engine.host import tune_cpu_allocator

LATENCY_BATCHES = (1, 64)


def count_parameters(model: nn.Module) -> int:
    """All parameters (trainable or not); buffers such as BatchNorm statistics are not parameters."""
    return sum(p.numel() for p in model.parameters())


def flops_per_image(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Forward FLOPs for one image of shape ``(C, H, W)`` in eval mode."""
    was_training = model.training
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    counter = FlopCounterMode(display=False)
    try:
        with torch.inference_mode(), counter:
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def checkpoint_mb(path: str | Path) -> float:
    """File size in MB (10^6 bytes)."""
    return Path(path).stat().st_size / 1e6


LATENCY_THREADS = 1  # one thread: the deployable figure, and the one a shared machine disturbs least
LATENCY_ROUNDS = 7  # interleaved rounds over every model and batch size; the lowest block median of each is kept
LATENCY_SPAN_S = 8.0  # ... and more rounds (up to 5x) until the rounds span this long, so blocks differ in time
LATENCY_PASSES = {1: (10, 25)}  # batch -> (warm-up passes, timed passes per block); other batches: (2, 7)


def latency_ms(model: nn.Module, input_shape: Sequence[int], batch: int, rounds: int = LATENCY_ROUNDS,
               threads: int | None = LATENCY_THREADS) -> float:
    """Wall time (ms) of one fp32 CPU forward pass of ``batch`` images of one model (see :func:`latency_table`)."""
    return latency_table([(model, tuple(input_shape))], (batch,), rounds, threads)[0][batch]


def latency_table(models: Sequence[tuple[nn.Module, tuple[int, ...]]], batches: Sequence[int] = LATENCY_BATCHES,
                  rounds: int = LATENCY_ROUNDS, threads: int | None = LATENCY_THREADS,
                  budget_s: float = 2.0) -> list[dict[int, float]]:
    """Per model, ``{batch: ms}``: the lowest of ``rounds`` (or more, up to 5x, until the rounds span
    ``LATENCY_SPAN_S``) block medians of one fp32 CPU forward pass, with ``threads`` intra-op threads (None: as set).

    The blocks run in interleaved rounds (every model and batch size once per round, then again), so each figure's
    blocks are spread over the whole measurement: interference from other processes and the host only ever slows a
    pass down, and phases of it last seconds, so the lowest block median of blocks taken at different times is the
    figure that repeats (a single model's back-to-back blocks varied by 30-60% between reports). Each block times
    up to ``LATENCY_PASSES`` passes and stops early once ``budget_s`` is spent (large models at batch 64).
    """
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    inputs = {b: {shape: torch.randn(b, *shape) for _, shape in models} for b in batches}
    best: list[dict[int, float]] = [{b: float("inf") for b in batches} for _ in models]
    try:
        with torch.inference_mode():
            for model, shape in models:
                model.eval()
                for b in batches:
                    for _ in range(LATENCY_PASSES.get(b, (2, 7))[0]):
                        model(inputs[b][shape])
            start, done = time.perf_counter(), 0
            while done < max(1, rounds) or (done < 5 * rounds and time.perf_counter() - start < LATENCY_SPAN_S):
                done += 1
                for i, (model, shape) in enumerate(models):
                    for b in batches:
                        median = _block(model, inputs[b][shape], LATENCY_PASSES.get(b, (2, 7))[1], budget_s)
                        best[i][b] = min(best[i][b], 1000.0 * median)
    finally:
        torch.set_num_threads(previous)
    return best


def _block(model: nn.Module, x: torch.Tensor, iters: int, budget_s: float) -> float:
    times: list[float] = []
    spent = 0.0
    while len(times) < iters and (not times or spent < budget_s):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return statistics.median(times)


def static_costs(model: nn.Module, input_shape: Sequence[int], checkpoint: str | Path) -> dict[str, float]:
    """params, flops_per_image and checkpoint_mb of ``model``."""
    model = model.to("cpu").eval()
    return {"params": count_parameters(model), "flops_per_image": flops_per_image(model, input_shape),
            "checkpoint_mb": checkpoint_mb(checkpoint)}


def measure_efficiency(model: nn.Module, input_shape: Sequence[int], checkpoint: str | Path,
                       batches: Sequence[int] = LATENCY_BATCHES) -> dict[str, float]:
    """params, flops_per_image, checkpoint_mb and latency_b<N>_ms for each batch size, of ``model`` on the CPU."""
    return measure_many([(model, tuple(input_shape), checkpoint)], batches)[0]


def measure_many(models: Sequence[tuple[nn.Module, tuple[int, ...], str | Path]],
                 batches: Sequence[int] = LATENCY_BATCHES) -> list[dict[str, float]]:
    """:func:`measure_efficiency` of several models, their latencies measured in the same interleaved rounds."""
    tune_cpu_allocator()  # the trainer's malloc settings: no page faults of freed activations in the timing
    out = [static_costs(model, shape, path) for model, shape, path in models]
    table = latency_table([(model.to("cpu"), shape) for model, shape, _ in models], batches)
    for values, lat in zip(out, table):
        values.update({f"latency_b{b}_ms": ms for b, ms in lat.items()})
    return out


LATENCY_NOTE = (f"CPU latency: fp32 eager PyTorch, {LATENCY_THREADS} thread, inference mode; the lowest of "
                f"{LATENCY_ROUNDS}-{5 * LATENCY_ROUNDS} block medians of up to 25 (batch 1) or 7 (batch 64) timed "
                f"passes after 10 / 2 warm-up passes, the blocks of every architecture taken in interleaved rounds "
                f"over at least {LATENCY_SPAN_S:.0f} s.")
