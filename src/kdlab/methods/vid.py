"""``vid``: variational information distillation (Ahn, Hu, Damianou, Lawrence & Dai 2019, "Variational Information
Distillation for Knowledge Transfer", CVPR).

Maximize a variational lower bound on the mutual information between teacher and student features: per stage, a
Gaussian q(t | s) with mean μ(s) from a small regressor and a learned per-channel variance σ²_c predicts the teacher's
map t from the student's map s; the loss is its negative log-likelihood (without the constant):

    μ     = conv1×1 − ReLU − conv1×1 − ReLU − conv1×1 (s)            (channels: C_s -> C_t -> C_t -> C_t, no bias)
    σ²_c  = softplus(α_c) + eps
    L     = CE(y, p_s) + feat_weight · Σ_stages mean_{n,c,h,w} ½ · ((t − μ)² / σ²_c + log σ²_c)

The larger of the two maps is average-pooled to the smaller's size *before* the regressor. α starts at
softplus⁻¹(init_pred_var − eps), so σ² = init_pred_var = 5 at first. Defaults as the authors' code as used by
RepDistiller (distiller_zoo/VID.py: ``VIDLoss(s, t, t)``, init_pred_var 5, eps 1e-5, ``-b 1`` on ``feat[1:-1]``) and
mdistiller (mdistiller/distillers/VID.py: VID.LOSS.FEAT_WEIGHT = 1 on ``feats[1:]``): feat_weight = 1, CE weight 1,
every stage of ``stage_names`` (paired from the deep end). Regressors and variances are extra modules: not saved with
the student.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.methods.base import Context, Setup, check_param
from kdlab.methods.fp32 import fp32
from kdlab.methods.hooks import check_map, match_spatial
from kdlab.methods.paired import PairedMethod, PairedParams
from kdlab.methods.registry import METHODS


@fp32
def vid_loss(pred_mean: Tensor, target: Tensor, alpha: Tensor, eps: float = 1e-5) -> Tensor:
    """mean of ½·((t − μ)²/σ² + log σ²) with σ²_c = softplus(α_c) + eps (α: one value per channel); fp32."""
    var = (F.softplus(alpha) + eps).view(1, -1, 1, 1)
    return (0.5 * ((pred_mean - target.detach()).pow(2) / var + var.log())).mean()


def conv1x1(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)


class VIDHead(nn.Module):
    """The mean regressor and the per-channel variance parameter of one stage pair."""

    def __init__(self, c_student: int, c_teacher: int, init_pred_var: float, eps: float) -> None:
        super().__init__()
        c_mid = c_teacher
        self.regressor = nn.Sequential(conv1x1(c_student, c_mid), nn.ReLU(), conv1x1(c_mid, c_mid), nn.ReLU(),
                                       conv1x1(c_mid, c_teacher))
        alpha0 = math.log(math.expm1(init_pred_var - eps))  # softplus(alpha0) + eps = init_pred_var
        self.alpha = nn.Parameter(torch.full((c_teacher,), alpha0))

    def forward(self, student_feature: Tensor, teacher_feature: Tensor, eps: float) -> Tensor:
        s, t = match_spatial(student_feature, teacher_feature)
        return vid_loss(self.regressor(s), t, self.alpha, eps)


@dataclass
class VIDParams(PairedParams):
    student_layers: list[str] = field(default_factory=list)  # default: all of the student's stage_names
    teacher_layers: list[str] = field(default_factory=list)  # default: all of the teacher's stage_names
    feat_weight: float = 1.0  # (mdistiller's VID.LOSS.FEAT_WEIGHT, RepDistiller's -b)
    init_pred_var: float = 5.0  # σ² at the start
    eps: float = 1e-5  # added to the softplus: σ² >= eps


@METHODS.register("vid")
class VID(PairedMethod):
    Params = VIDParams
    params: VIDParams
    layer_default = "stages"
    needs_prepare = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, params: VIDParams | None = None) -> None:
        super().__init__(student, teacher, params)
        p = self.params
        check_param(p.feat_weight >= 0, "feat_weight", f"must be >= 0, got {p.feat_weight}")
        check_param(p.eps > 0, "eps", f"must be > 0, got {p.eps}")
        check_param(p.init_pred_var > p.eps, "init_pred_var", f"must be > eps ({p.eps}), got {p.init_pred_var}")
        self.heads = nn.ModuleList()

    def extra_modules(self) -> list[nn.Module]:
        return [self.heads]

    def build(self, setup: Setup) -> None:
        p, probe = self.params, setup.probe
        self.heads = nn.ModuleList()
        for s, t in zip(self.s_layers, self.t_layers):
            f_s, f_t = probe.features[s], probe.teacher_features[t]
            check_map(s, f_s)
            check_map(t, f_t)
            self.heads.append(VIDHead(f_s.shape[1], f_t.shape[1], p.init_pred_var, p.eps))

    def losses(self, ctx: Context) -> dict[str, Tensor]:
        pairs = zip(self.heads, self.feature_pairs(ctx))
        total = sum(head(f_s, f_t, self.params.eps) for head, (f_s, f_t) in pairs)
        return {"loss_vid": self.params.feat_weight * total}
