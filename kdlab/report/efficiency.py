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
LATENCY_BLOCKS = 3


def latency_ms(model: nn.Module, input_shape: Sequence[int], batch: int, warmup: int = 2, iters: int = 15,
               budget_s: float = 2.0, blocks: int = LATENCY_BLOCKS, threads: int | None = LATENCY_THREADS) -> float:
    """Wall time (ms) of one fp32 CPU forward pass of ``batch`` images: the lowest of ``blocks`` medians, each over up
    to ``iters`` timed passes, after ``warmup`` untimed ones; with ``threads`` intra-op threads (None: as set).

    Interference from other processes only ever slows a pass down, so the lowest block median is the figure that
    repeats (two reports of one experiment agree within a few percent); each block stops early once ``budget_s`` is
    spent (big models at batch 64) but times at least one pass.
    """
    model = model.eval()
    x = torch.randn(batch, *input_shape)
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            return 1000.0 * min(_block(model, x, iters, budget_s) for _ in range(max(1, blocks)))
    finally:
        torch.set_num_threads(previous)


def _block(model: nn.Module, x: torch.Tensor, iters: int, budget_s: float) -> float:
    times: list[float] = []
    spent = 0.0
    while len(times) < iters and (not times or spent < budget_s):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return statistics.median(times)


def measure_efficiency(model: nn.Module, input_shape: Sequence[int], checkpoint: str | Path,
                       batches: Sequence[int] = LATENCY_BATCHES) -> dict[str, float]:
    """params, flops_per_image, checkpoint_mb and latency_b<N>_ms for each batch size, of ``model`` on the CPU."""
    model = model.to("cpu").eval()
    out: dict[str, float] = {
        "params": count_parameters(model),
        "flops_per_image": flops_per_image(model, input_shape),
        "checkpoint_mb": checkpoint_mb(checkpoint),
    }
    tune_cpu_allocator()  # the trainer's malloc settings: no page faults of freed activations in the timing
    for batch in batches:
        # One warm-up pass is enough for a big batch (and two would cost seconds on a large model); a small model's
        # batch-1 pass takes ~0.3 ms, so more warm-up and more timed passes keep its median off wake-up outliers.
        out[f"latency_b{batch}_ms"] = latency_ms(model, input_shape, batch, warmup=10 if batch == 1 else 2,
                                                 iters=25 if batch == 1 else 7)
    return out


LATENCY_NOTE = (f"CPU latency: fp32 eager PyTorch, {LATENCY_THREADS} thread, inference mode; the lowest of "
                f"{LATENCY_BLOCKS} block medians of up to 25 (batch 1) or 7 (batch 64) timed passes after 10 / 2 "
                f"warm-up passes, measured once per architecture and label.")
