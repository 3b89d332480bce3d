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


def latency_ms(model: nn.Module, input_shape: Sequence[int], batch: int, warmup: int = 2, iters: int = 25,
               budget_s: float = 3.0) -> float:
    """Median wall time (ms) of one CPU forward pass of ``batch`` images, after ``warmup`` untimed passes.

    Stops timing early once ``budget_s`` is spent (big models at batch 64), but always times at least one pass. The
    thread count is left as it is: the caller's setting is part of what is measured.
    """
    model = model.eval()
    x = torch.randn(batch, *input_shape)
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        spent = 0.0
        while len(times) < iters and (not times or spent < budget_s):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
            spent += times[-1]
    return 1000.0 * statistics.median(times)


def measure_efficiency(model: nn.Module, input_shape: Sequence[int], checkpoint: str | Path,
                       batches: Sequence[int] = LATENCY_BATCHES) -> dict[str, float]:
    """params, flops_per_image, checkpoint_mb and latency_b<N>_ms for each batch size, of ``model`` on the CPU."""
    model = model.to("cpu").eval()
    out: dict[str, float] = {
        "params": count_parameters(model),
        "flops_per_image": flops_per_image(model, input_shape),
        "checkpoint_mb": checkpoint_mb(checkpoint),
    }
    for batch in batches:
        # One warm-up pass is enough for a big batch (and two would cost seconds on a large model); a small model's
        # batch-1 pass takes ~0.3 ms, so more warm-up and 25 timed passes keep its median off thread wake-up outliers.
        out[f"latency_b{batch}_ms"] = latency_ms(model, input_shape, batch, warmup=5 if batch == 1 else 1)
    return out
