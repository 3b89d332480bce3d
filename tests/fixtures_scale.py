"""Helpers of the scale-out tests: a learnable Fashion-MNIST in the genuine IDX format, a BatchNorm-free model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from fixtures_data import FASHION_FILES, idx_bytes, write_gz


def make_learnable_fashion_mnist(root: Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> Path:
    """The four IDX .gz files, with images whose class shows in their brightness and in a class-coded column band,
    so that a few hundred steps reach well above chance and the accuracies of two runs can be compared."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = rng.normal(0, 25, (n, 28, 28)) + 20 + 18 * labels[:, None, None]
        for i, c in enumerate(labels):
            images[i, :, 2 + 2 * c:4 + 2 * c] += 90
        write_gz(root / FASHION_FILES[split][0], idx_bytes(np.clip(images, 0, 255).astype(np.uint8)))
        write_gz(root / FASHION_FILES[split][1], idx_bytes(labels.astype(np.uint8)))
    return root


class TinyMLP(nn.Module):
    """No BatchNorm, no dropout: one process and N DDP ranks compute the same function of the same global batch."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(7)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 49, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.body(self.pool(x))
