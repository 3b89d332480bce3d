"""``dist``: distillation from a stronger teacher (Huang, You, Wang, Qian & Xu 2022, "DIST", NeurIPS).

Match relations rather than exact probabilities: the Pearson correlation ρ between student and teacher predictions
Y = softmax(z/tau), per image across classes (inter-class) and per class across the batch (intra-class):

    L = CE(y, p_s) + beta  · tau² · (1 − mean_n ρ(Y_s[n, :], Y_t[n, :]))         (inter-class)
                   + gamma · tau² · (1 − mean_c ρ(Y_s[:, c], Y_t[:, c]))         (intra-class)

Defaults as the authors' CIFAR-100 runs (hunto/DIST_KD README -> image_classification_sota
configs/strategies/distill/dist_cifar.yaml: ``kd: dist_t4``, ``kd_loss_weight: 2``, ``ori_loss_weight: 1``; the loss
lib/models/losses/dist_kd.py ``DIST(beta=1, gamma=1, tau)``): beta = gamma = 2 (the loss weight 2 times the loss's
beta = gamma = 1), tau = 4, CE weight 1. Their ImageNet runs (resnet_dist.yaml, dist_b2.yaml: ``kd: dist``,
``kd_loss_weight: 2``) use tau = 1: ``method.tau=1``. ρ uses eps = 1e-8 in the denominator, as the reference.

``logit_standardization=true`` Z-scores both logits per sample before the softmax (Sun et al. 2024, see logits.py).
The paper reports no DIST setting (its code applies the Z-score to KD, DKD, MLKD and CTKD); with it, tau sets the
softmax's sharpness on unit-variance logits, so the paper's base temperatures 2–3 are the natural starting point.
Off by default: the loss is then exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from kdlab.methods.base import BaseParams, Context, Method, check_param
from kdlab.methods.logits import prepare_logits
from kdlab.methods.registry import METHODS


def pearson(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Row-wise Pearson correlation of two N×K matrices."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(student_logits: Tensor, teacher_logits: Tensor, beta: float = 1.0, gamma: float = 1.0,
              tau: float = 1.0) -> tuple[Tensor, Tensor]:
    """(beta·tau²·inter-class term, gamma·tau²·intra-class term); fp32."""
    y_s = (student_logits.float() / tau).softmax(dim=1)
    y_t = (teacher_logits.float() / tau).softmax(dim=1)
    inter = 1.0 - pearson(y_s, y_t).mean()
    intra = 1.0 - pearson(y_s.t(), y_t.t()).mean()
    return beta * tau * tau * inter, gamma * tau * tau * intra


@dataclass
class DISTParams(BaseParams):
    beta: float = 2.0  # weight of the inter-class relation term (per image, across classes)
    gamma: float = 2.0  # weight of the intra-class relation term (per class, across the batch)
    tau: float = 4.0  # softmax temperature (the authors' CIFAR runs; 1 on ImageNet)
    logit_standardization: bool = False  # Z-score each sample's logits before the softmax (Sun et al. 2024)


@METHODS.register("dist")
class DIST(Method):
    Params = DISTParams
    params: DISTParams

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, params: DISTParams | None = None) -> None:
        super().__init__(student, teacher, params)
        check_param(self.params.tau > 0, "tau", f"must be > 0, got {self.params.tau}")

    def reads_teacher_logits(self) -> bool:
        return True

    def losses(self, ctx: Context) -> dict[str, Tensor]:
        p = self.params
        z_s, z_t = prepare_logits(ctx.logits, ctx.require_teacher_logits(), p.logit_standardization)
        inter, intra = dist_loss(z_s, z_t, p.beta, p.gamma, p.tau)
        return {"loss_dist_inter": inter, "loss_dist_intra": intra}
