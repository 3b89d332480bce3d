"""``rkd``: relational knowledge distillation (Park, Kim, Lu & Cho 2019, "Relational Knowledge Distillation", CVPR).

Transfer the *structure* of a batch of embeddings rather than the embeddings: pairwise distances and triplet angles.
With f the N×D embeddings (student s, teacher t) and ℓ the Huber (smooth-L1, beta = 1) loss averaged over entries:

    ψ_D(i, j)    = ‖f_i − f_j‖₂ / μ,      μ = mean of the non-zero distances in the batch
    ψ_A(i, j, k) = ⟨e_ij, e_ik⟩,           e_ij = (f_j − f_i) / ‖f_j − f_i‖₂         (cosine of the angle at i)
    L = CE(y, p_s) + w_d · ℓ(ψ_D^s, ψ_D^t) + w_a · ℓ(ψ_A^s, ψ_A^t)

Distances use ‖a‖² + ‖b‖² − 2⟨a, b⟩ clamped at eps = 1e-12 before the square root, with a zero diagonal; ℓ averages
over all N² (distance) and N³ (angle) entries, diagonals included — as RepDistiller (distiller_zoo/RKD.py) and
mdistiller (mdistiller/distillers/RKD.py) compute it. Defaults from both: w_d = 25, w_a = 50, CE weight 1, on the
penultimate embedding (RepDistiller's ``feat[-1]``, mdistiller's ``pooled_feat``: here the input of the classifier,
``"<classifier>:input"``, or the model's ``pre_logits_name`` before a dropout; override with
``student_layers``/``teacher_layers``, several pairs are summed).
The angle term holds N×N×D differences: at batch 256 and D = 2048 that is 0.5 GB in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.methods.base import Context, check_param, loss_sum
from kdlab.methods.fp32 import fp32
from kdlab.methods.paired import PairedMethod, PairedParams
from kdlab.methods.registry import METHODS


def pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """N×N Euclidean distances of the rows of ``e``, zero on the diagonal (no gradient flows through it)."""
    sq = e.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2.0 * e @ e.t()).clamp(min=eps).sqrt()
    return d.masked_fill(torch.eye(len(e), dtype=torch.bool, device=e.device), 0.0)


def angles(e: Tensor) -> Tensor:
    """The N³ cosines ⟨e_ij, e_ik⟩ of the unit difference vectors e_ij = normalize(e_j − e_i), flattened."""
    diff = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # diff[i, j] = normalize(e_j − e_i)
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


@fp32
def rkd_loss(student_feature: Tensor, teacher_feature: Tensor, eps: float = 1e-12) -> tuple[Tensor, Tensor]:
    """(distance term, angle term), unweighted; features are flattened to N×D; fp32."""
    s, t = student_feature.flatten(1), teacher_feature.flatten(1).detach()
    d_t = pairwise_distances(t, eps)
    d_t = d_t / d_t[d_t > 0].mean()
    d_s = pairwise_distances(s, eps)
    d_s = d_s / d_s[d_s > 0].mean()
    distance = F.smooth_l1_loss(d_s, d_t)
    angle = F.smooth_l1_loss(angles(s), angles(t))
    return distance, angle


@dataclass
class RKDParams(PairedParams):
    student_layers: list[str] = field(default_factory=list)  # default: the classifier's input (the embedding)
    teacher_layers: list[str] = field(default_factory=list)  # default: the teacher classifier's input
    distance_weight: float = 25.0  # w_d
    angle_weight: float = 50.0  # w_a


@METHODS.register("rkd")
class RKD(PairedMethod):
    Params = RKDParams
    params: RKDParams
    layer_default = "embedding"

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, params: RKDParams | None = None) -> None:
        super().__init__(student, teacher, params)
        p = self.params
        check_param(p.distance_weight >= 0, "distance_weight", f"must be >= 0, got {p.distance_weight}")
        check_param(p.angle_weight >= 0, "angle_weight", f"must be >= 0, got {p.angle_weight}")

    def losses(self, ctx: Context) -> dict[str, Tensor]:
        terms = [rkd_loss(f_s, f_t) for f_s, f_t in self.feature_pairs(ctx)]
        p = self.params
        return {"loss_rkd_distance": p.distance_weight * loss_sum(d for d, _ in terms),
                "loss_rkd_angle": p.angle_weight * loss_sum(a for _, a in terms)}
