"""``at``: attention transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention").

    a(F)  = normalize_L2( flatten( mean_c |F_c|^p ) )                  (one spatial attention map per image)
    L     = CE(y, softmax(z_s)) + beta · Σ_stages mean_{n,hw} (a(F_s) − a(F_t))²

The paper writes beta/2 · Σ ‖a_s − a_t‖_2; its code (szagoruyko/attention-transfer), RepDistiller and mdistiller all
compute beta · Σ_stages (a_s − a_t).pow(2).mean() with beta = 1000, which is what this does. When spatial sizes differ,
the larger map is average-pooled to the smaller's size before taking attention. Defaults: p = 2, beta = 1000, on every
stage of ``stage_names``, student and teacher stages paired by position aligned at the deepest stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.methods.base import BaseParams, Context, Method, check_param, loss_sum
from kdlab.methods.hooks import check_map, match_spatial, pair_deepest, resolve_layers
from kdlab.methods.registry import METHODS


def attention_map(feature: Tensor, p: float = 2.0) -> Tensor:
    """N×C×H×W -> N×(H·W): channel mean of |F|^p, flattened and L2-normalized per image; fp32."""
    return F.normalize(feature.float().abs().pow(p).mean(1).flatten(1), dim=1)


def at_loss(student_feature: Tensor, teacher_feature: Tensor, p: float = 2.0) -> Tensor:
    """Mean over images and positions of the squared difference of the two attention maps (after spatial matching)."""
    s, t = match_spatial(student_feature, teacher_feature)
    return (attention_map(s, p) - attention_map(t, p)).pow(2).mean()


@dataclass
class ATParams(BaseParams):
    student_layers: list[str] = field(default_factory=list)  # default: all of the student's stage_names
    teacher_layers: list[str] = field(default_factory=list)  # default: all of the teacher's stage_names
    beta: float = 1000.0  # weight of the summed attention losses
    p: float = 2.0  # exponent of |F| in the attention map


@METHODS.register("at")
class AT(Method):
    Params = ATParams
    params: ATParams

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, params: ATParams | None = None) -> None:
        super().__init__(student, teacher, params)
        p = self.params
        s_layers = resolve_layers(student, p.student_layers, "method.student_layers")
        t_layers = resolve_layers(self.require_teacher(), p.teacher_layers, "method.teacher_layers")
        if p.student_layers and p.teacher_layers:
            check_param(len(s_layers) == len(t_layers), "teacher_layers",
                        f"must pair with method.student_layers ({len(t_layers)} vs {len(s_layers)} layers)")
        self.s_layers, self.t_layers = pair_deepest(s_layers, t_layers)
        check_param(p.p > 0, "p", f"must be > 0, got {p.p}")

    def student_layers(self) -> list[str]:
        return self.s_layers

    def teacher_layers(self) -> list[str]:
        return self.t_layers

    def losses(self, ctx: Context) -> dict[str, Tensor]:
        for s, t in zip(self.s_layers, self.t_layers):  # maps on both sides (a ViT's tokens are not: one line)
            check_map(s, ctx.features[s])
            check_map(t, ctx.teacher_features[t])
        pairs = zip(self.s_layers, self.t_layers)
        total = loss_sum(at_loss(ctx.features[s], ctx.teacher_features[t], self.params.p) for s, t in pairs)
        return {"loss_at": self.params.beta * total}
