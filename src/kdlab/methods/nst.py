"""``nst``: neuron selectivity transfer (Huang & Wang 2017, "Like What You Like: Knowledge Distill via Neuron
Selectivity Transfer", arXiv:1707.01219).

Each channel's activation pattern over the image positions is a sample; distill by the squared maximum mean discrepancy
(MMD²) between the student's and the teacher's sets of channel patterns, with the polynomial kernel
k(x, y) = (xᵀy)² (degree 2, c = 0). With f_c the L2-normalized (over positions) pattern of channel c:

    MMD² = mean_{c,c'} k(f^t_c, f^t_c') + mean_{c,c'} k(f^s_c, f^s_c') − 2 · mean_{c,c'} k(f^s_c, f^t_c')
    L    = CE(y, p_s) + feat_weight · Σ_stages mean_images MMD²

The means run over all channel pairs and the images of the batch; channel counts may differ, positions must match:
the larger map is average-pooled to the smaller's size first. The teacher-only term is a constant for the student,
kept (as the reference's ``full_loss``) so that the loss reads as an MMD². Defaults as RepDistiller
(distiller_zoo/NST.py, ``-b 50`` on ``feat[1:-1]``, every stage) and mdistiller (mdistiller/distillers/NST.py:
NST.LOSS.FEAT_WEIGHT = 50 on ``feats[1:]``): feat_weight = 50, CE weight 1, every stage of ``stage_names``
(student and teacher stages paired from the deep end).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.methods.base import Context, Setup, check_param, loss_sum
from kdlab.methods.fp32 import fp32
from kdlab.methods.hooks import check_map, match_spatial
from kdlab.methods.paired import PairedMethod, PairedParams
from kdlab.methods.registry import METHODS


def poly_kernel_mean(a: Tensor, b: Tensor) -> Tensor:
    """mean over images and channel pairs of (⟨a_c, b_c'⟩)², for N×Ca×P and N×Cb×P."""
    return (a @ b.transpose(1, 2)).pow(2).mean()


@fp32
def nst_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """MMD² with the kernel (xᵀy)² between the channels' normalized spatial patterns (fp32)."""
    s, t = match_spatial(student_feature, teacher_feature.detach())
    s = F.normalize(s.flatten(2), dim=2)
    t = F.normalize(t.flatten(2), dim=2)
    return poly_kernel_mean(t, t) + poly_kernel_mean(s, s) - 2.0 * poly_kernel_mean(s, t)


@dataclass
class NSTParams(PairedParams):
    student_layers: list[str] = field(default_factory=list)  # default: all of the student's stage_names
    teacher_layers: list[str] = field(default_factory=list)  # default: all of the teacher's stage_names
    feat_weight: float = 50.0  # (mdistiller's NST.LOSS.FEAT_WEIGHT, RepDistiller's -b)


@METHODS.register("nst")
class NST(PairedMethod):
    Params = NSTParams
    params: NSTParams
    layer_default = "stages"

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, params: NSTParams | None = None) -> None:
        super().__init__(student, teacher, params)
        check_param(self.params.feat_weight >= 0, "feat_weight", f"must be >= 0, got {self.params.feat_weight}")

    def build(self, setup: Setup) -> None:
        for s, t in zip(self.s_layers, self.t_layers):
            check_map(s, setup.probe.features[s])
            check_map(t, setup.probe.teacher_features[t])

    def losses(self, ctx: Context) -> dict[str, Tensor]:
        total = loss_sum(nst_loss(f_s, f_t) for f_s, f_t in self.feature_pairs(ctx))
        return {"loss_nst": self.params.feat_weight * total}
