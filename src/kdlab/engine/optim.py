"""Optimizers and per-step learning-rate schedules (linear warm-up, then cosine / multistep / constant)."""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from kdlab.config import OptimConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    if cfg.name == "adam":  # weight decay as an L2 term in the gradient, as the many Adam recipes expect
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


class LrFactor:
    """lr multiplier at optimizer step ``s``; a picklable object so the scheduler's state stays plain data."""

    def __init__(self, cfg: OptimConfig, steps_per_epoch: int, epochs: int) -> None:
        self.total = max(1, steps_per_epoch * epochs)
        self.warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
        self.schedule = cfg.schedule
        self.gamma = cfg.gamma
        # milestones below 1 are fractions of the run; others are epochs
        self.milestones = sorted(int(round((m * epochs if m < 1 else m) * steps_per_epoch)) for m in cfg.milestones)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return 0.01 + 0.99 * step / self.warmup
        if self.schedule == "cosine":
            progress = (step - self.warmup) / max(1, self.total - self.warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if self.schedule == "multistep":
            return self.gamma ** sum(step >= m for m in self.milestones)
        return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int, epochs: int) -> LambdaLR:
    """A scheduler stepped once per optimizer step."""
    return LambdaLR(optimizer, LrFactor(cfg, steps_per_epoch, epochs))
