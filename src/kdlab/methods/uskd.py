"""``uskd``: universal self-knowledge distillation, the teacher-free variant of NKD (Yang et al. 2023, ICCV, "From
Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach with Normalized Loss and Customized Soft
Labels").

No teacher: the soft labels are customized from the student itself. With p = softmax(z) the student's output, y the
label and B the batch:

- target: p̃_y = p_y² + 1 − mean_B(p_y²) (no gradient), term  L_t = −mean(p̃_y · log p_y);
- weak supervision: a linear classifier w on a mid-level feature (GAP of the second-to-last stage), trained with
  L_w = −mu · mean Σ_c ỹ_c log softmax(w)_c,  ỹ = 0.9 · onehot(y) + 0.1 / K;
- non-target: the classes are ranked by r = softmax(w)/(1 − softmax(w)_y) + log p/(1 − log p_y) (descending); class c
  at rank k (1-based) gets Zipf's 1/k; the target removed and renormalized, this q̂ is the non-target soft label:
  L_n = −mean Σ_{c≠y} q̂_c log p̂_c, p̂ the softmax over the non-target logits.

    L = CE(y, p) + alpha · L_t + beta · L_n + L_w

Reference: yzd-v/cls_KD ``USKDLoss`` (mmcls/models/dis_losses/uskd.py), ImageNet defaults alpha = 1, beta = 0.1,
mu = 0.005, the feature of ResNet's second-to-last stage (256 channels for ResNet-18), and the student's own
cross-entropy kept (weight 1). Where the reference departs from the paper's text: its rank adds the student's
*log*-probabilities (``s_i`` is reassigned to the log-softmax before the rank), as done here; the rank has no gradient,
so this only changes the order. A feature given as tokens (N×L×C) is averaged over its tokens (the reference takes a
ViT's class token).
"""

from __future__ import annotations

from dataclasses import dataclass, field


import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.methods.base import BaseParams, Context, Method, Setup, check_param
from kdlab.methods.hooks import resolve_layers
from kdlab.methods.nkd import non_target
from kdlab.methods.registry import METHODS


def pooled(feature: Tensor) -> Tensor:
    """An N×C vector from a map (global average pool), a token sequence (mean over tokens) or a vector."""
    if feature.dim() == 4:
        return feature.float().mean(dim=(2, 3))
    if feature.dim() == 3:
        return feature.float().mean(dim=1)
    return feature.float().flatten(1)


def zipf_labels(weak_logits: Tensor, logits: Tensor, labels: Tensor) -> Tensor:
    """The normalized N×(K−1) Zipf soft labels of the non-target classes, ranked as the reference does."""
    w = F.softmax(weak_logits, dim=1)
    log_p = F.log_softmax(logits, dim=1)
    idx = labels[:, None]
    score = w / (1 - w.gather(1, idx) + 1e-6) + log_p / (1 - log_p.gather(1, idx) + 1e-6)
    order = score.argsort(dim=1, descending=True)  # order[:, k] is the class ranked k
    rank = order.argsort(dim=1)  # rank[:, c] is class c's position
    z = 1.0 / (rank + 1).float()
    z = non_target(z, labels)
    return z / z.sum(dim=1, keepdim=True)


def uskd_loss(logits: Tensor, weak_logits: Tensor, labels: Tensor, alpha: float, beta: float,
              mu: float) -> dict[str, Tensor]:
    """The three USKD terms (target, non-target, weak), each already weighted; fp32."""
    z, w = logits.float(), weak_logits.float()
    k, idx = z.shape[1], labels[:, None]
    p_y = F.softmax(z, dim=1).gather(1, idx)
    soft_y = (p_y ** 2 + 1 - (p_y ** 2).mean(0, keepdim=True)).detach()
    log_p = F.log_softmax(z, dim=1)
    target = -(soft_y * log_p.gather(1, idx)).mean()
    smooth = 0.9 * F.one_hot(labels, k).float() + 0.1 / k
    weak = -(mu * smooth * F.log_softmax(w, dim=1)).sum(1).mean()
    q = zipf_labels(w.detach(), z.detach(), labels)
    non = -(q * F.log_softmax(non_target(z, labels), dim=1)).sum(1).mean()
    return {"loss_uskd_target": alpha * target, "loss_uskd_non_target": beta * non, "loss_uskd_weak": weak}


@dataclass
class USKDParams(BaseParams):
    alpha: float = 1.0  # weight of the customized target term
    beta: float = 0.1  # weight of the Zipf non-target term
    mu: float = 0.005  # weight of the weak classifier's smoothed cross-entropy
    student_layers: list[str] = field(default_factory=list)  # the mid feature; []: the second-to-last stage


@METHODS.register("uskd")
class USKD(Method):
    Params = USKDParams
    params: USKDParams
    needs_teacher = False
    needs_prepare = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, params: USKDParams | None = None) -> None:
        super().__init__(student, teacher, params)
        p = self.params
        for key in ("alpha", "beta", "mu"):
            check_param(getattr(p, key) >= 0, key, f"must be >= 0, got {getattr(p, key)}")
        check_param(len(p.student_layers) <= 1, "student_layers", f"names one layer, got {p.student_layers}")
        stages = resolve_layers(student, p.student_layers, "method.student_layers")
        self.layer = stages[-1] if p.student_layers else stages[max(len(stages) - 2, 0)]
        self.weak = nn.ModuleList()

    def student_layers(self) -> list[str]:
        return [self.layer]

    def build(self, setup: Setup) -> None:
        channels = pooled(setup.probe.features[self.layer]).shape[1]
        self.weak.append(nn.Linear(channels, setup.num_classes))

    def extra_modules(self) -> list[nn.Module]:
        return [self.weak]

    def losses(self, ctx: Context) -> dict[str, Tensor]:
        p = self.params
        weak_logits = self.weak[0](pooled(ctx.features[self.layer]))
        return uskd_loss(ctx.logits, weak_logits, ctx.labels, p.alpha, p.beta, p.mu)

