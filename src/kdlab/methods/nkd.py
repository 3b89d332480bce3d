"""``nkd``: normalized knowledge distillation (Yang, Zeng, Zhang, Li, Yuan & Li 2023, ICCV, "From Knowledge
Distillation to Self-Knowledge Distillation: A Unified Approach with Normalized Loss and Customized Soft Labels").

KD split into the target class and the non-target classes, the non-target part *normalized* (softmax over the K − 1
non-target logits only, so its scale no longer depends on the target probability). With y the label, p = softmax(z),
T_y the teacher's target probability (T = 1) and p̂^τ = softmax over the non-target classes at temperature τ:

    L = CE(y, p_s) − T_y · log p_s,y − gamma · τ² · Σ_{c≠y} p̂^τ_t,c · log p̂^τ_s,c       (each averaged over the batch)

Reference: yzd-v/cls_KD, ``NKDLoss`` (mmcls/models/dis_losses/nkd.py) with its ImageNet defaults temp = 1,
gamma = 1.5; the distiller keeps the student's own cross-entropy (weight 1) beside it. The paper writes the first term
with the teacher's target probability as a soft label exactly as here. (One older copy of the reference,
mmcls/distillation/losses/nkd.py, builds its non-target mask with ``scatter_(1, label, 1)``, which keeps the target
class: a bug fixed in the newer file; here the target is always removed.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.methods.base import BaseParams, Context, Method, check_param
from kdlab.methods.registry import METHODS


def non_target(logits: Tensor, labels: Tensor) -> Tensor:
    """The N×(K−1) logits left when each row's target column is removed (order of the others kept)."""
    keep = ~F.one_hot(labels, logits.shape[1]).bool()
    return logits[keep].reshape(logits.shape[0], -1)


def nkd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temp: float, gamma: float) -> Tensor:
    """−mean(t_y · log s_y) − gamma · temp² · mean Σ_{c≠y} p̂_t,c log p̂_s,c (non-target softmax at ``temp``); fp32."""
    z_s, z_t = student_logits.float(), teacher_logits.float()
    log_s_y = F.log_softmax(z_s, dim=1).gather(1, labels[:, None])
    t_y = F.softmax(z_t, dim=1).gather(1, labels[:, None])
    target = -(t_y * log_s_y).mean()
    log_q_s = F.log_softmax(non_target(z_s, labels) / temp, dim=1)
    q_t = F.softmax(non_target(z_t, labels) / temp, dim=1)
    return target - gamma * temp ** 2 * (q_t * log_q_s).sum(1).mean()


@dataclass
class NKDParams(BaseParams):
    temp: float = 1.0  # temperature of the normalized non-target distributions (reference ImageNet: 1)
    gamma: float = 1.5  # weight of the non-target term (reference ImageNet: 1.5)


@METHODS.register("nkd")
class NKD(Method):
    Params = NKDParams
    params: NKDParams

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, params: NKDParams | None = None) -> None:
        super().__init__(student, teacher, params)
        check_param(self.params.temp > 0, "temp", f"must be > 0, got {self.params.temp}")
        check_param(self.params.gamma >= 0, "gamma", f"must be >= 0, got {self.params.gamma}")

    def reads_teacher_logits(self) -> bool:
        return True

    def losses(self, ctx: Context) -> dict[str, Tensor]:
        p = self.params
        return {"loss_nkd": nkd_loss(ctx.logits, ctx.require_teacher_logits(), ctx.labels, p.temp, p.gamma)}
