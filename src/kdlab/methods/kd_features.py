"""``kd_features``: logit KD plus feature matching on the last stage through a 1×1 adapter.

    L = (1 − alpha) · CE(y, p_s) + alpha · T² · KL(p_t^T ‖ p_s^T) + feat_weight · MSE(pool(A(F_s)), pool(F_t))

Hinton's KD (kd.py) plus a FitNets-style hint (Romero et al. 2015) on the deepest stage, where both networks hold the
representation their classifier reads. A is a linear 1×1 conv + BatchNorm from the student's channels to the teacher's
(e.g. 512 -> 2048 for ResNet-18 -> ResNet-50), trained with the student and discarded afterwards; ``pool`` average-pools
the larger map to the smaller's size. Defaults: T = 4, alpha = 0.9 (as kd), feat_weight = 1.0. Why 1.0: after the
adapter's BatchNorm both sides are on a unit scale, so the MSE starts at O(1), the order of the KD term; the feature
term then guides without swamping the logit terms (FitNets' 100 is for a middle stage with no logit loss beside it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor, nn

from kdlab.methods.base import BaseParams, Context, Method, Setup, check_param
from kdlab.methods.fitnets import ConvRegressor, hint_loss
from kdlab.methods.hooks import check_map, resolve_layers
from kdlab.methods.kd import kd_loss
from kdlab.methods.registry import METHODS


@dataclass
class KDFeaturesParams(BaseParams):
    T: float = 4.0  # softmax temperature
    alpha: float = 0.9  # weight of the soft (teacher) term; the hard CE gets 1 − alpha
    feat_weight: float = 1.0  # weight of the last-stage feature MSE
    student_layer: Optional[str] = None  # default: the student's last stage (stage_names[-1])
    teacher_layer: Optional[str] = None  # default: the teacher's last stage


@METHODS.register("kd_features")
class KDFeatures(Method):
    Params = KDFeaturesParams
    params: KDFeaturesParams
    needs_prepare = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None,
                 params: KDFeaturesParams | None = None) -> None:
        super().__init__(student, teacher, params)
        p = self.params
        check_param(p.T > 0, "T", f"must be > 0, got {p.T}")
        check_param(0.0 <= p.alpha <= 1.0, "alpha", f"must be in [0, 1], got {p.alpha}")
        self.s_layer = resolve_layers(student, [p.student_layer] if p.student_layer else [], "method.student_layer")[-1]
        t_names = [p.teacher_layer] if p.teacher_layer else []
        self.t_layer = resolve_layers(self.require_teacher(), t_names, "method.teacher_layer")[-1]
        self.adapter: nn.Module | None = None

    def student_layers(self) -> list[str]:
        return [self.s_layer]

    def teacher_layers(self) -> list[str]:
        return [self.t_layer]

    def reads_teacher_logits(self) -> bool:
        return True

    def ce_weight(self) -> float:
        return 1.0 - self.params.alpha

    def extra_modules(self) -> list[nn.Module]:
        return [self.adapter] if self.adapter is not None else []

    def build(self, setup: Setup) -> None:
        probe = setup.probe
        f_s, f_t = probe.features[self.s_layer], probe.teacher_features[self.t_layer]
        check_map(self.s_layer, f_s)
        check_map(self.t_layer, f_t)
        self.adapter = ConvRegressor(f_s.shape[1], f_t.shape[1], relu=False)

    def losses(self, ctx: Context) -> dict[str, Tensor]:
        p = self.params
        feat = hint_loss(self.built(self.adapter)(ctx.features[self.s_layer]), ctx.teacher_features[self.t_layer])
        kd = kd_loss(ctx.logits, ctx.require_teacher_logits(), p.T)
        return {"loss_kd": p.alpha * kd, "loss_feat": p.feat_weight * feat}
