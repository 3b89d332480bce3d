"""Evaluation: predictions of a model over a loader, and the classification metrics computed from them."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.engine.device import autocast


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device, bf16: bool = False,
            channels_last: bool = False) -> tuple[Tensor, Tensor, float]:
    """Logits (fp32, CPU), labels (CPU) and images/second of ``model`` over ``loader``; restores the train mode."""
    was_training = model.training
    model.eval()
    logits, labels, seen = [], [], 0
    start = time.perf_counter()
    for batch in loader:
        images = batch.images.contiguous(memory_format=torch.channels_last) if channels_last else batch.images
        with autocast(device, bf16):
            out = model(images)
        logits.append(out.float())
        labels.append(batch.labels)
        seen += len(batch)
    elapsed = time.perf_counter() - start
    model.train(was_training)
    if not logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long), 0.0
    return torch.cat(logits).cpu(), torch.cat(labels).cpu(), seen / max(elapsed, 1e-9)


def classification_metrics(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """top-1 / top-5 accuracy (%), mean cross-entropy (NLL) and the number of samples."""
    n = len(labels)
    if n == 0:
        return {}
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    hits = topk.eq(labels[:, None])
    metrics = {
        "top1": 100.0 * hits[:, 0].float().mean().item(),
        "loss": F.cross_entropy(logits, labels).item(),
        "n": n,
    }
    if logits.shape[1] > 5:
        metrics["top5"] = 100.0 * hits.any(dim=1).float().mean().item()
    return metrics


def evaluate(model: nn.Module, loader, device: torch.device, bf16: bool = False,
             channels_last: bool = False) -> dict[str, float]:
    logits, labels, img_s = predict(model, loader, device, bf16, channels_last)
    return {**classification_metrics(logits, labels), "img_s": img_s}
