"""``byot``: self-distillation, no teacher (Zhang et al. 2019, "Be Your Own Teacher", ICCV).

An auxiliary head (bottleneck convs -> global pool -> linear classifier) follows every student stage but the last; the
network's own output is the deepest classifier and teaches the shallow heads. For head i, with q = softmax:

    L_i = (1 − alpha) · CE(y, q_i) + alpha · T² · KL(q_deep^T ‖ q_i^T) + lambda · ‖F_i − F_deep‖²
    L   = (1 − alpha) · CE(y, q_deep) + Σ_i L_i

F_i is head i's pooled bottleneck output (projected to the deepest stage's channels), F_deep the globally pooled last
stage; the deepest logits and features are detached (targets). ‖·‖² is a mean squared error here. Defaults alpha = 0.3,
lambda = 0.03 (as reported for the paper; the public re-implementation luanyunteng/pytorch-be-your-own-teacher uses
alpha = 0.1 and 1e-6 on a *summed* squared error), T = 3 (that re-implementation's default). Heads are extra modules:
only the backbone is saved. Stages: ``layers``, default the student's ``stage_names``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.methods.base import BaseParams, Context, Method, Setup, check_param
from kdlab.methods.hooks import check_map, resolve_layers
from kdlab.methods.kd import kd_loss
from kdlab.methods.registry import METHODS


def byot_head_loss(head_logits: Tensor, head_feature: Tensor, deep_logits: Tensor, deep_feature: Tensor,
                   labels: Tensor, alpha: float, T: float, lam: float) -> dict[str, Tensor]:
    """One shallow head's three weighted terms (the deepest logits/features are treated as fixed targets); fp32."""
    return {
        "ce": (1.0 - alpha) * F.cross_entropy(head_logits.float(), labels),
        "kd": alpha * kd_loss(head_logits, deep_logits.detach(), T),
        "feat": lam * F.mse_loss(head_feature.float(), deep_feature.detach().float()),
    }


def conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    pad = kernel // 2 if stride == 1 else 0
    return [nn.Conv2d(c_in, c_out, kernel, stride, pad, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class AuxHead(nn.Module):
    """Bottleneck (1×1 reduce, k×k stride k down to the deepest resolution, 1×1 expand) -> pool -> linear."""

    def __init__(self, c_in: int, c_deep: int, ratio: int, num_classes: int) -> None:
        super().__init__()
        mid = max(c_deep // 4, 8)
        down = conv_bn_relu(mid, mid, ratio, ratio) if ratio > 1 else conv_bn_relu(mid, mid, 3)
        self.bottleneck = nn.Sequential(*conv_bn_relu(c_in, mid, 1), *down, *conv_bn_relu(mid, c_deep, 1))
        self.fc = nn.Linear(c_deep, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feature = F.adaptive_avg_pool2d(self.bottleneck(x), 1).flatten(1)
        return self.fc(feature), feature


@dataclass
class BYOTParams(BaseParams):
    layers: list[str] = field(default_factory=list)  # student stages, shallow to deep; default: stage_names
    alpha: float = 0.3  # weight of the KL to the deepest classifier; the heads' and the deepest CE get 1 − alpha
    feat_weight: float = 0.03  # lambda: weight of the feature MSE to the deepest features
    T: float = 3.0  # softmax temperature of the KL term


@METHODS.register("byot")
class BYOT(Method):
    Params = BYOTParams
    params: BYOTParams
    needs_teacher = False
    needs_prepare = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, params: BYOTParams | None = None) -> None:
        super().__init__(student, teacher, params)
        p = self.params
        self.layers = resolve_layers(student, p.layers, "method.layers")
        check_param(len(self.layers) >= 2, "layers", f"needs at least 2 stages, got {self.layers}")
        check_param(0.0 <= p.alpha <= 1.0, "alpha", f"must be in [0, 1], got {p.alpha}")
        check_param(p.T > 0, "T", f"must be > 0, got {p.T}")
        self.heads = nn.ModuleList()

    def student_layers(self) -> list[str]:
        return self.layers

    def ce_weight(self) -> float:
        return 1.0 - self.params.alpha

    def extra_modules(self) -> list[nn.Module]:
        return [self.heads]

    def build(self, setup: Setup) -> None:
        probe = setup.probe
        for name in self.layers:
            check_map(name, probe.features[name])
        deep = probe.features[self.layers[-1]]
        self.heads = nn.ModuleList()
        for name in self.layers[:-1]:
            f = probe.features[name]
            ratio = max(f.shape[-1] // deep.shape[-1], 1)
            self.heads.append(AuxHead(f.shape[1], deep.shape[1], ratio, probe.logits.shape[1]))

    def losses(self, ctx: Context) -> dict[str, Tensor]:
        p = self.params
        deep_feature = F.adaptive_avg_pool2d(ctx.features[self.layers[-1]], 1).flatten(1)
        totals: dict[str, Tensor] = {}
        for head, name in zip(self.heads, self.layers[:-1]):
            logits, feature = head(ctx.features[name])
            terms = byot_head_loss(logits, feature, ctx.logits, deep_feature, ctx.labels, p.alpha, p.T, p.feat_weight)
            for key, value in terms.items():
                totals[key] = totals.get(key, 0) + value
        return {f"loss_heads_{key}": value for key, value in totals.items()}
