"""``kd``: knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network").

    L = (1 − alpha) · CE(y, softmax(z_s)) + alpha · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T))

KL is summed over classes and averaged over the batch (``reduction="batchmean"``); T² keeps the soft term's gradients
on the scale of the hard term's as T grows. Defaults T = 4, alpha = 0.9: the CRD/RepDistiller/mdistiller CIFAR
protocol (0.1·CE + 0.9·KD). Here ``alpha`` weights the SOFT (teacher) term; beware, some code bases use the opposite
convention (alpha on the hard term).

``logit_standardization=true`` Z-scores both logits per sample before the softmax (Sun et al. 2024, see logits.py).
The paper's CIFAR-100 setting is T = 2 and a KD weight of 9 beside CE 0.1 (sunshangquan/logit-standardization-KD
README and tools/train.py: ``--logit-stand --base-temp 2 --kd-weight 9``; its per-pair logs use T = 2–4, weight 1–12).
``alpha`` cannot express 0.1 + 9 (its weights sum to 1), so reproduce it as a composite with ``ce``:
``method=kd+ce method.kd.logit_standardization=true method.kd.T=2 method.kd.weight=10`` (10 × alpha 0.9 = 9; the
composite's CE weight is min(0.1, 1) = 0.1). Off by default: the loss is then exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.methods.base import BaseParams, Context, Method, check_param
from kdlab.methods.logits import prepare_logits
from kdlab.methods.registry import METHODS


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)), summed over classes, averaged over the batch; computed in fp32."""
    log_p_s = F.log_softmax(student_logits.float() / T, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / T, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (T * T)


@dataclass
class KDParams(BaseParams):
    T: float = 4.0  # softmax temperature of both teacher and student
    alpha: float = 0.9  # weight of the soft (teacher) term; the hard CE gets 1 − alpha
    logit_standardization: bool = False  # Z-score each sample's logits before the softmax (Sun et al. 2024)


@METHODS.register("kd")
class KD(Method):
    Params = KDParams
    params: KDParams

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, params: KDParams | None = None) -> None:
        super().__init__(student, teacher, params)
        p = self.params
        check_param(p.T > 0, "T", f"must be > 0, got {p.T}")
        check_param(0.0 <= p.alpha <= 1.0, "alpha", f"must be in [0, 1], got {p.alpha}")

    def reads_teacher_logits(self) -> bool:
        return True

    def ce_weight(self) -> float:
        return 1.0 - self.params.alpha

    def losses(self, ctx: Context) -> dict[str, Tensor]:
        z_s, z_t = prepare_logits(ctx.logits, ctx.require_teacher_logits(), self.params.logit_standardization)
        return {"loss_kd": self.params.alpha * kd_loss(z_s, z_t, self.params.T)}
