"""``ctkd``: curriculum temperature for KD (Li, Li, Yang, Zhao, Song, Luo, Li & Yang 2023, "Curriculum Temperature
for Knowledge Distillation", AAAI).

KD whose temperature is learned adversarially: one global temperature τ is trained to *maximize* the KD loss, through
a gradient-reversal layer whose strength λ grows over the first epochs (easy to hard), while the student minimizes it:

    τ  = t_start + t_end · sigmoid(GRL_λ(θ))          θ a learnable scalar, initialized to 1 (τ₀ = 1 + 20·σ(1) ≈ 15.6)
    L  = (1 − alpha) · CE(y, p_s) + alpha · τ² · KL(softmax(z_t / τ) ‖ softmax(z_s / τ))
    GRL_λ: identity forward, gradient × (−λ) backward
    λ(e) = lambda_min + (lambda_max − lambda_min) · (1 − cos(π · min(e, curriculum_epochs) / curriculum_epochs)) / 2

with e the epoch counted from 1 (the reference's loop), so λ rises from 0.024 in the first epoch to 1 at epoch 10.
The reference (zhengli97/CTKD: models/temp_global.py ``Global_T`` and ``GradientReversalFunction``; train_student.py
``CosineDecay(max_value=decay_max, min_value=decay_min, num_loops=decay_loops)`` and ``t_start``/``t_end``;
helper/loops.py; scripts/run_cifar_distill.sh: ``--decay_max 0 --decay_min -1 --decay_loops 10 -r 0.1 -a 0.9
--kd_T 4``) writes λ as a value from 0 down to −1 that the GRL multiplies the gradient by; the same thing. Defaults
from it: t_start = 1, t_end = 20, alpha = 0.9 (CE 0.1), lambda 0 → 1 over curriculum_epochs = 10. θ is an extra
module (trained by the same optimizer, as the reference's SGD over ``trainable_list``; saved in checkpoints, not with
the student). Logits only: precomputed teacher logits can replace the teacher.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kdlab.methods.base import BaseParams, Context, Method, check_param
from kdlab.methods.kd import kd_loss
from kdlab.methods.registry import METHODS


class GradientReversal(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by −lam."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, lam: float) -> Tensor:  # type: ignore[override]
        ctx.lam = lam
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return -ctx.lam * grad, None


def curriculum_lambda(epoch: int, curriculum_epochs: int, lambda_max: float = 1.0, lambda_min: float = 0.0) -> float:
    """Cosine ramp of the reversal strength; ``epoch`` counted from 1, flat after ``curriculum_epochs``."""
    e = min(max(epoch, 0), curriculum_epochs)
    return lambda_min + (lambda_max - lambda_min) * (1.0 - math.cos(math.pi * e / curriculum_epochs)) / 2.0


class GlobalTemperature(nn.Module):
    """One learnable temperature τ = t_start + t_end · sigmoid(θ), θ seen through a gradient-reversal layer."""

    def __init__(self, t_start: float, t_end: float, init: float = 1.0) -> None:
        super().__init__()
        self.t_start, self.t_end = t_start, t_end
        self.theta = nn.Parameter(torch.tensor(float(init)))

    def forward(self, lam: float) -> Tensor:
        return self.t_start + self.t_end * torch.sigmoid(GradientReversal.apply(self.theta, lam))


@dataclass
class CTKDParams(BaseParams):
    alpha: float = 0.9  # weight of the KD term; the hard CE gets 1 − alpha
    t_start: float = 1.0  # lowest temperature
    t_end: float = 20.0  # range of the temperature above t_start
    lambda_max: float = 1.0  # final strength of the gradient reversal
    lambda_min: float = 0.0  # initial strength
    curriculum_epochs: int = 10  # epochs of the cosine ramp of lambda


@METHODS.register("ctkd")
class CTKD(Method):
    Params = CTKDParams
    params: CTKDParams

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, params: CTKDParams | None = None) -> None:
        super().__init__(student, teacher, params)
        p = self.params
        check_param(0.0 <= p.alpha <= 1.0, "alpha", f"must be in [0, 1], got {p.alpha}")
        check_param(p.t_start > 0, "t_start", f"must be > 0, got {p.t_start}")
        check_param(p.t_end >= 0, "t_end", f"must be >= 0, got {p.t_end}")
        check_param(p.curriculum_epochs > 0, "curriculum_epochs", f"must be > 0, got {p.curriculum_epochs}")
        self.temperature = GlobalTemperature(p.t_start, p.t_end)
        self.on_epoch_start(0, 1)

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        p = self.params
        self.reversal = curriculum_lambda(epoch + 1, p.curriculum_epochs, p.lambda_max, p.lambda_min)

    def reads_teacher_logits(self) -> bool:
        return True

    def ce_weight(self) -> float:
        return 1.0 - self.params.alpha

    def extra_modules(self) -> list[nn.Module]:
        return [self.temperature]

    def losses(self, ctx: Context) -> dict[str, Tensor]:
        T = self.temperature(self.reversal).float()
        return {"loss_kd": self.params.alpha * kd_loss(ctx.logits, ctx.require_teacher_logits(), T)}
