"""Optimizers and per-step learning-rate schedules (linear warm-up, then cosine / multistep / constant).

A method may declare ``loss_groups()`` (loss term -> momentum offset): its loss terms then get separate momentum
buffers (:class:`PerLossMomentumSGD`) and the engine backpropagates each group separately (``backward_groups``).
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from kdlab.config import OptimConfig
from kdlab.errors import ConfigError


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig,
                    loss_groups: dict[str, float] | None = None) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg``; a :class:`PerLossMomentumSGD` when the method declares ``loss_groups``
    (loss term or ``"*"`` -> momentum offset, see ``Method.loss_groups``)."""
    params = list(params)
    if loss_groups:
        if cfg.name != "sgd":
            raise ConfigError(f"config key 'optim.name' must be sgd for this method (per-loss momenta), got {cfg.name}")
        return PerLossMomentumSGD(params, loss_groups, lr=cfg.lr, momentum=cfg.momentum,
                                  weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    beta1, beta2 = cfg.betas  # a YAML list or a tuple
    if cfg.name == "adam":  # weight decay as an L2 term in the gradient, as the many Adam recipes expect
        return torch.optim.Adam(params, lr=cfg.lr, betas=(beta1, beta2), weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(beta1, beta2), weight_decay=cfg.weight_decay)


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


class PerLossMomentumSGD(torch.optim.Optimizer):
    """SGD whose loss terms each keep their own momentum buffer, with their own momentum coefficient.

    ``groups`` maps a loss term (``"loss_ce"``) or ``"*"`` (every term not named) to an offset added to the base
    ``momentum``: a method declares it with ``loss_groups()``. The engine backpropagates each group's sum of terms
    separately (:func:`group_losses`), calls :meth:`stash` after each backward and :meth:`step` once. Per parameter and
    group g with gradient d_g (weight decay added to the first group that reaches the parameter):

        b_g ← m_g · b_g + d_g      (b_g ← d_g at its first step)        p ← p − lr · Σ_g b_g

    with m_g = momentum + offset_g when several groups reach the parameter, and the base momentum when only one does
    (a parameter only one loss trains has nothing to balance); Nesterov uses d_g + m_g · b_g in place of b_g.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], groups: dict[str, float], lr: float, momentum: float,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(list(params), dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov))
        self.groups = dict(groups)
        self.pending: dict[str, dict[torch.nn.Parameter, torch.Tensor]] = {}

    def group_of(self, term: str) -> str:
        return term if term in self.groups else "*"

    def split(self, parts: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
        """The loss per group (declared order), from the ``loss_*`` terms; groups with no term are left out."""
        sums: dict[str, torch.Tensor] = {}
        for term, value in parts.items():
            group = self.group_of(term)
            sums[group] = sums[group] + value if group in sums else value
        return [(g, sums[g]) for g in self.groups if g in sums]

    @torch.no_grad()
    def stash(self, group: str) -> None:
        """Move the gradients of the last backward pass into ``group``'s slot (``p.grad`` is cleared)."""
        slot = self.pending.setdefault(group, {})
        for param_group in self.param_groups:
            for p in param_group["params"]:
                if p.grad is not None:
                    slot[p] = p.grad
                    p.grad = None

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        pending, self.pending = self.pending, {}
        for param_group in self.param_groups:
            lr, base, nesterov = param_group["lr"], param_group["momentum"], param_group["nesterov"]
            for p in param_group["params"]:
                grads = [(g, pending[g][p]) for g in self.groups if g in pending and p in pending[g]]
                update = None
                for i, (g, d_p) in enumerate(grads):
                    if i == 0 and param_group["weight_decay"]:
                        d_p = d_p.add(p, alpha=param_group["weight_decay"])
                    m = base + self.groups[g] if len(grads) > 1 else base
                    key = f"momentum_buffer:{g}"
                    buf = self.state[p].get(key)
                    if buf is None:
                        buf = self.state[p][key] = d_p.detach().clone()
                    else:
                        buf.mul_(m).add_(d_p)
                    step = d_p.add(buf, alpha=m) if nesterov else buf
                    update = step if update is None else update + step
                if update is not None:
                    p.add_(update, alpha=-lr)
        return None
