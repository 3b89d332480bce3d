"""``sp``: similarity-preserving distillation (Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation",
ICCV).

Images that the teacher finds similar should be similar to the student too. With F the N×(C·H·W) flattened feature
maps of a batch of N images:

    G = row_normalize_L2(F · Fᵀ)                   (N×N batch similarities; student G_s, teacher G_t)
    L = CE(y, p_s) + feat_weight · ‖G_t − G_s‖²_F / N²

Channels and spatial sizes of the two networks may differ: only the N×N matrices are compared. Defaults as RepDistiller
(distiller_zoo/SP.py, run with ``-b 3000`` on ``feat[-2]``, the last stage's map) and mdistiller
(mdistiller/distillers/SP.py: SP.LOSS.FEAT_WEIGHT = 3000 on ``feats[-1]``): feat_weight = 3000, CE weight 1, the
last stage of each network (``stage_names[-1]``; override with ``student_layers``/``teacher_layers``, several pairs are
summed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.methods.base import Context, check_param, loss_sum
from kdlab.methods.fp32 import fp32
from kdlab.methods.paired import PairedMethod, PairedParams
from kdlab.methods.registry import METHODS


def batch_similarity(feature: Tensor) -> Tensor:
    """N×N Gram matrix of the flattened features, each row L2-normalized."""
    f = feature.flatten(1)
    return F.normalize(f @ f.t(), p=2, dim=1)


@fp32
def sp_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """‖G_t − G_s‖²_F / N² (fp32)."""
    n = student_feature.shape[0]
    diff = batch_similarity(teacher_feature.detach()) - batch_similarity(student_feature)
    return diff.pow(2).sum() / (n * n)


@dataclass
class SPParams(PairedParams):
    student_layers: list[str] = field(default_factory=list)  # default: the student's last stage
    teacher_layers: list[str] = field(default_factory=list)  # default: the teacher's last stage
    feat_weight: float = 3000.0  # (mdistiller's SP.LOSS.FEAT_WEIGHT, RepDistiller's -b)


@METHODS.register("sp")
class SP(PairedMethod):
    Params = SPParams
    params: SPParams
    layer_default = "last"

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, params: SPParams | None = None) -> None:
        super().__init__(student, teacher, params)
        check_param(self.params.feat_weight >= 0, "feat_weight", f"must be >= 0, got {self.params.feat_weight}")

    def losses(self, ctx: Context) -> dict[str, Tensor]:
        total = loss_sum(sp_loss(f_s, f_t) for f_s, f_t in self.feature_pairs(ctx))
        return {"loss_sp": self.params.feat_weight * total}
