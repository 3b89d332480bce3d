"""Calibration: reliability bins and the expected calibration error (Guo et al. 2017, "On Calibration of Modern
Neural Networks").

    ECE = Σ_b (|B_b| / n) · |acc(B_b) − conf(B_b)|

over ``bins`` equal-width confidence bins; bin b holds the samples whose top-1 probability lies in (b/B, (b+1)/B]
(bin 0 also takes a confidence of exactly 0). ECE is given in percent, like every accuracy in kdlab.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin sums (not means) so that bins of several runs can be pooled by adding them."""

    count: list[int]
    confidence_sum: list[float]
    correct: list[int]

    @property
    def bins(self) -> int:
        return len(self.count)

    @property
    def total(self) -> int:
        return sum(self.count)

    def mean_confidence(self) -> list[float | None]:
        return [s / c if c else None for s, c in zip(self.confidence_sum, self.count)]

    def accuracy(self) -> list[float | None]:
        return [k / c if c else None for k, c in zip(self.correct, self.count)]

    def ece(self) -> float:
        """Expected calibration error in percent (0 for no samples)."""
        n = self.total
        if n == 0:
            return 0.0
        # |B|·|acc − conf| = |Σ correct − Σ conf|
        gap = sum(abs(k - s) for k, s in zip(self.correct, self.confidence_sum))
        return 100.0 * gap / n

    def __add__(self, other: "ReliabilityBins") -> "ReliabilityBins":
        if other.bins != self.bins:
            raise ValueError(f"cannot pool {self.bins} bins with {other.bins} bins")
        return ReliabilityBins([a + b for a, b in zip(self.count, other.count)],
                               [a + b for a, b in zip(self.confidence_sum, other.confidence_sum)],
                               [a + b for a, b in zip(self.correct, other.correct)])

    def to_dict(self) -> dict:
        return {"count": self.count, "confidence_sum": self.confidence_sum, "correct": self.correct}

    @classmethod
    def from_dict(cls, data: dict) -> "ReliabilityBins":
        return cls([int(v) for v in data["count"]], [float(v) for v in data["confidence_sum"]],
                   [int(v) for v in data["correct"]])

    @classmethod
    def empty(cls, bins: int) -> "ReliabilityBins":
        return cls([0] * bins, [0.0] * bins, [0] * bins)


def reliability_bins(probs: Tensor, labels: Tensor, bins: int = 15) -> ReliabilityBins:
    """Counts, summed confidences and correct predictions per confidence bin of ``probs`` ``[N, K]``."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    probs = probs.detach().double().cpu()
    confidence, prediction = probs.max(dim=1)
    correct = prediction.eq(labels.cpu()).long()
    # ceil(conf·B) − 1 puts conf in (b/B, (b+1)/B] into bin b; the clamp sends conf == 0 to bin 0.
    index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    count = torch.bincount(index, minlength=bins)
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, confidence)
    correct_sum = torch.bincount(index, weights=correct.double(), minlength=bins)
    return ReliabilityBins([int(v) for v in count], [float(v) for v in conf_sum],
                           [int(round(float(v))) for v in correct_sum])


def expected_calibration_error(probs: Tensor, labels: Tensor, bins: int = 15, from_logits: bool = False) -> float:
    """ECE (%) of class probabilities ``probs`` ``[N, K]`` (or logits, with ``from_logits=True``) against ``labels``."""
    if from_logits:
        probs = torch.softmax(probs.double(), dim=1)
    return reliability_bins(probs, labels, bins).ece()
