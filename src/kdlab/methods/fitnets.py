"""``fitnets``: hints through a learned regressor (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets").

    L = CE(y, softmax(z_s)) + hint_weight · Σ_pairs MSE(pool(r(F_s)), pool(F_t))

r is a 1×1 conv + BatchNorm (+ ReLU) regressor from the student's channels to the teacher's, trained with the student
and thrown away afterwards; ``pool`` average-pools the larger map to the smaller one's height and width when they
differ. Defaults as RepDistiller/mdistiller on CIFAR: one pair, the middle stage of each network (``stage_names``),
hint_weight = 100, trained jointly with CE (one stage, not the paper's two-stage schedule). Combine with KD as
``kd+fitnets`` (compose.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.methods.base import BaseParams, Context, Method, Setup, check_param, loss_sum
from kdlab.methods.hooks import check_map, match_spatial, resolve_layers
from kdlab.methods.registry import METHODS


def hint_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """Mean squared error between two maps of equal channels, the larger pooled to the smaller's size; fp32."""
    s, t = match_spatial(student_feature.float(), teacher_feature.float())
    return F.mse_loss(s, t)


class ConvRegressor(nn.Sequential):
    """1×1 conv + BatchNorm (+ ReLU): maps student channels to teacher channels."""

    def __init__(self, in_channels: int, out_channels: int, relu: bool = True) -> None:
        layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
        super().__init__(*layers, *([nn.ReLU()] if relu else []))


def middle(names: list[str]) -> list[str]:
    """The middle stage (the later one of an even count): stage 2 of 3, stage 3 of 4."""
    return [names[len(names) // 2]]


@dataclass
class FitNetsParams(BaseParams):
    student_layers: list[str] = field(default_factory=list)  # default: the middle of the student's stage_names
    teacher_layers: list[str] = field(default_factory=list)  # default: the middle of the teacher's stage_names
    hint_weight: float = 100.0  # weight of the summed hint MSE
    regressor_relu: bool = True  # ReLU after the regressor (teacher stage outputs are post-ReLU, so >= 0)


@METHODS.register("fitnets")
class FitNets(Method):
    Params = FitNetsParams
    params: FitNetsParams
    needs_prepare = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None,
                 params: FitNetsParams | None = None) -> None:
        super().__init__(student, teacher, params)
        p = self.params
        self.s_layers = resolve_layers(student, p.student_layers, "method.student_layers")
        self.t_layers = resolve_layers(self.require_teacher(), p.teacher_layers, "method.teacher_layers")
        if not p.student_layers:
            self.s_layers = middle(self.s_layers)
        if not p.teacher_layers:
            self.t_layers = middle(self.t_layers)
        n_s, n_t = len(self.s_layers), len(self.t_layers)
        check_param(n_s == n_t, "teacher_layers", f"must pair with method.student_layers ({n_t} vs {n_s} layers)")
        self.regressors = nn.ModuleList()

    def student_layers(self) -> list[str]:
        return self.s_layers

    def teacher_layers(self) -> list[str]:
        return self.t_layers

    def extra_modules(self) -> list[nn.Module]:
        return [self.regressors]

    def build(self, setup: Setup) -> None:
        probe = setup.probe
        self.regressors = nn.ModuleList()
        for s, t in zip(self.s_layers, self.t_layers):
            f_s, f_t = probe.features[s], probe.teacher_features[t]
            check_map(s, f_s)
            check_map(t, f_t)
            self.regressors.append(ConvRegressor(f_s.shape[1], f_t.shape[1], self.params.regressor_relu))

    def losses(self, ctx: Context) -> dict[str, Tensor]:
        pairs = zip(self.regressors, self.s_layers, self.t_layers)
        hint = loss_sum(hint_loss(r(ctx.features[s]), ctx.teacher_features[t]) for r, s, t in pairs)
        return {"loss_hint": self.params.hint_weight * hint}
