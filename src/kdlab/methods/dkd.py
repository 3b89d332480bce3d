"""``dkd``: decoupled knowledge distillation (Zhao, Cui, Song, Qiu & Liang 2022, CVPR).

KD split into a target-class part and a non-target-class part, weighted separately. With p = softmax(z/T),
b = [p_y, 1 − p_y] (target vs the rest) and p̂ = softmax over the non-target classes only:

    TCKD = T² · KL(b_t ‖ b_s)          NCKD = T² · KL(p̂_t ‖ p̂_s)          (summed, averaged over the batch)
    L    = CE(y, p_s) + w · (alpha · TCKD + beta · NCKD),     w = min((epoch + 1) / warmup_epochs, 1)

Computed in log space: b = [p_y, 1 − p_y] comes from log-softmax, log(1 − p_y) as the logsumexp of the non-target
log-probabilities. The reference (mdistiller/distillers/DKD.py) takes ``log`` of the summed softmax probabilities: the
same value and gradient while they are representable, and ``inf``/NaN once Σ_{c≠y} p_c underflows in fp32 (a target
logit leading by ~100 T); kdlab's earlier clamp at 1e-12 cut the gradient from a lead of ~28 T on. Here the gradient
stays finite and exact at any lead. NCKD masks the target logit with −1e9 where the reference subtracts 1000 (the
same value unless a non-target logit/T lies 1000 below the others).

Defaults as mdistiller's CIFAR-100 configs: alpha = 1, beta = 8 (8–10 depending on the pair), T = 4, the KD term
warmed up linearly over 20 epochs (mdistiller counts epochs from 1: the first epoch has w = 1/20, as here with the
engine's 0-based ``on_epoch_start``). CE weight 1.

Short schedules: the defaults are for 240 epochs. Without the warm-up, the NCKD term (beta · T² = 128 times a KL of up
to log(K − 1)) gives a from-scratch student gradients ~30x the cross-entropy's, and SGD at lr 0.05 kills it. Measured
on Fashion-MNIST (cnn_small from resnet20, 20,000 images, 3 epochs, lr 0.05, seed 0; ce alone: 82.86% test; fp32
collapses exactly as bf16 does, so it is not the arithmetic):

    dkd (defaults: warm-up 20, so w = 0.05-0.15 here)          83.03
    dkd warmup_epochs=1 (w = 1 from the first step)            10.00   (collapsed: chance)
    dkd warmup_epochs=1 beta=2                                 77.22
    dkd warmup_epochs=1 + optim.grad_clip=5                    83.83

So on a short schedule keep a warm-up of several epochs, or clip gradients (``optim.grad_clip``).

``logit_standardization=true`` Z-scores both logits per sample before the softmax (Sun et al. 2024, see logits.py).
The paper's setting multiplies alpha and beta by 9 and sets T = 2, CE weight 1 and the warm-up unchanged
(sunshangquan/logit-standardization-KD tools/train.py: ``cfg.DKD.ALPHA *= kd_weight``, ``BETA *= kd_weight``,
``T = base_temp``; README: ``--base-temp 2 --kd-weight 9``): ``method.alpha=9 method.beta=72 method.T=2``.
Off by default: the loss is then exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.methods.base import BaseParams, Context, Method, check_param
from kdlab.methods.logits import prepare_logits
from kdlab.methods.registry import METHODS


def target_split(log_p: Tensor, target: Tensor) -> Tensor:
    """N×2 ``[log p_y, log Σ_{c≠y} p_c]`` from log-probabilities, in log space: the second is a logsumexp over the
    non-target classes, exact and differentiable however far the target logit leads (1 − p_y is never formed)."""
    log_target = log_p.masked_fill(~target, 0.0).sum(1)
    log_rest = log_p.masked_fill(target, float("-inf")).logsumexp(1)
    return torch.stack([log_target, log_rest], dim=1)


def dkd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, alpha: float, beta: float,
             T: float) -> Tensor:
    """alpha·TCKD + beta·NCKD (both ×T², KL summed over classes and averaged over the batch); fp32, in log space."""
    z_s, z_t = student_logits.float() / T, teacher_logits.float() / T
    target = F.one_hot(labels, z_s.shape[1]).bool()
    log_b_s, log_b_t = target_split(z_s.log_softmax(1), target), target_split(z_t.log_softmax(1), target)
    tckd = F.kl_div(log_b_s, log_b_t, reduction="batchmean", log_target=True)
    # non-target distributions: the target logit pushed to -1e9 (its probability is exactly 0 in fp32)
    log_q_s = F.log_softmax(z_s.masked_fill(target, -1e9), dim=1)
    log_q_t = F.log_softmax(z_t.masked_fill(target, -1e9), dim=1)
    nckd = F.kl_div(log_q_s, log_q_t, reduction="batchmean", log_target=True)
    return (alpha * tckd + beta * nckd) * (T * T)


@dataclass
class DKDParams(BaseParams):
    alpha: float = 1.0  # weight of TCKD (target vs non-target)
    beta: float = 8.0  # weight of NCKD (distribution among the non-target classes)
    T: float = 4.0  # softmax temperature
    warmup_epochs: int = 20  # linear warm-up of the KD term; 0 turns it off
    logit_standardization: bool = False  # Z-score each sample's logits before the softmax (Sun et al. 2024)


@METHODS.register("dkd")
class DKD(Method):
    Params = DKDParams
    params: DKDParams

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, params: DKDParams | None = None) -> None:
        super().__init__(student, teacher, params)
        check_param(self.params.T > 0, "T", f"must be > 0, got {self.params.T}")
        check_param(self.params.warmup_epochs >= 0, "warmup_epochs", f"must be >= 0, got {self.params.warmup_epochs}")
        self.on_epoch_start(0, 1)

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        warmup = self.params.warmup_epochs
        self.kd_scale = min((epoch + 1) / warmup, 1.0) if warmup > 0 else 1.0

    def reads_teacher_logits(self) -> bool:
        return True

    def losses(self, ctx: Context) -> dict[str, Tensor]:
        p = self.params
        z_s, z_t = prepare_logits(ctx.logits, ctx.require_teacher_logits(), p.logit_standardization)
        return {"loss_dkd": self.kd_scale * dkd_loss(z_s, z_t, ctx.labels, p.alpha, p.beta, p.T)}
