"""Checks of an exported model against PyTorch, its test metrics, and CPU latency of any predictor.

Agreement: the exported file (given pixels in [0, 1]) and the PyTorch student (given the loader's normalized images,
exactly as ``kdlab eval`` runs it) on the same real test images. A float32 export must match to
``max |Δlogit| <= FP32_RTOL * max(1, max |logit|)``: 1e-3 relative is ~100x what onnxruntime's fused kernels change
here (a few 1e-6 on logits of ~10) yet far below what a wrong preprocessing or a broken graph does (O(1)).
"""

from __future__ import annotations

import statistics
import time
from typing import Iterable, Sequence

import numpy as np
import torch

from kdlab.errors import KdlabError
from kdlab.export.formats import Predictor
from kdlab.report.calibration import expected_calibration_error
from kdlab.export.source import Source

FP32_RTOL = 1e-3
VERIFY_IMAGES = 256


def reference(source: Source, limit: int = VERIFY_IMAGES,
              device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(pixels, PyTorch logits) of the first ``limit`` test images: the model on the loader's normalized views."""
    model = source.model.to(device)
    pixels, logits = [], []
    with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # fp32 on GPUs too
        for (x01, _), (x, _) in zip(source.batches("test", limit), source.batches("test", limit, pixels=False,
                                                                                   device=device)):
            pixels.append(x01.numpy())
            logits.append(model(x).float().cpu().numpy())
    source.model.to("cpu")
    if not pixels:
        raise KdlabError(f"the run's test split is empty: nothing to verify the export on ({source.weights})")
    return np.concatenate(pixels), np.concatenate(logits)


def run_batched(predictor: Predictor, pixels: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate([predictor(np.ascontiguousarray(pixels[i:i + batch])) for i in range(0, len(pixels), batch)])


def agreement(logits: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """max |Δlogit| and top-1 agreement (%) of ``logits`` with ``ref``."""
    return {"max_abs_diff": float(np.abs(logits - ref).max()),
            "top1_agreement": 100.0 * float((logits.argmax(1) == ref.argmax(1)).mean())}


def check_fp32(predictor: Predictor, pixels: np.ndarray, ref: np.ndarray, what: str) -> dict[str, float]:
    """Agreement of an fp32 export with PyTorch; a :class:`KdlabError` past the tolerance."""
    found = agreement(run_batched(predictor, pixels), ref)
    one = predictor(np.ascontiguousarray(pixels[:1]))  # the dynamic batch axis, at batch 1 too
    found["max_abs_diff"] = max(found["max_abs_diff"], float(np.abs(one - ref[:1]).max()))
    tolerance = FP32_RTOL * max(1.0, float(np.abs(ref).max()))
    if not found["max_abs_diff"] <= tolerance:  # also catches NaN
        raise KdlabError(f"{what} does not match PyTorch: max |logit difference| {found['max_abs_diff']:.3g} > "
                         f"{tolerance:.3g} on {len(ref)} test images (top-1 agreement {found['top1_agreement']:.1f}%)")
    return {**found, "tolerance": tolerance, "verify_images": len(ref)}


def evaluate_predictor(predictor: Predictor,
                       batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[dict, np.ndarray]:
    """top-1 (%), ECE (%) and the number of images of ``predictor`` over the test split, and its logits."""
    logits, labels = [], []
    for x, y in batches:
        logits.append(predictor(np.ascontiguousarray(x.numpy())))
        labels.append(y)
    out = torch.from_numpy(np.concatenate(logits)).float()
    target = torch.cat(labels)
    top1 = 100.0 * out.argmax(1).eq(target).float().mean().item()
    ece = expected_calibration_error(out, target, from_logits=True)
    return {"test_top1": top1, "test_ece": ece, "test_n": len(target)}, out.numpy()


def latency_ms(predictor: Predictor, input_shape: Sequence[int], batch: int, warmup: int = 3, iters: int = 30,
               budget_s: float = 2.0) -> float:
    """Median wall time (ms) of one pass of ``batch`` random pixels after ``warmup`` untimed passes (as
    :func:`kdlab.report.efficiency.latency_ms`: at least one timed pass, at most ``budget_s`` of timing)."""
    x = np.random.default_rng(0).random((batch, *input_shape), dtype=np.float32)
    for _ in range(warmup):
        predictor(x)
    times: list[float] = []
    while len(times) < iters and (not times or sum(times) < budget_s):
        start = time.perf_counter()
        predictor(x)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def latencies(predictor: Predictor, input_shape: Sequence[int], prefix: str = "",
              batches: Sequence[int] = (1, 64)) -> dict[str, float]:
    """``{prefix}latency_b<N>_ms`` for each batch size (more warm-up and passes at batch 1, where a pass is short)."""
    return {f"{prefix}latency_b{b}_ms": latency_ms(predictor, input_shape, b, warmup=10 if b == 1 else 2,
                                                   iters=100 if b == 1 else 20) for b in batches}
