"""``pkt``: probabilistic knowledge transfer (Passalis & Tefas 2018, "Learning Deep Representations with
Probabilistic Knowledge Transfer", ECCV).

Match the conditional probability distributions that a cosine-similarity kernel induces over a batch. With
f̂ = f / (‖f‖ + eps) the normalized N×D embeddings:

    K_ij = (⟨f̂_i, f̂_j⟩ + 1) / 2                 (cosine similarity mapped to [0, 1])
    P_ij = K_ij / Σ_j K_ij                         (student P^s, teacher P^t; the diagonal included)
    L    = CE(y, p_s) + feat_weight · mean_ij P^t_ij · log((P^t_ij + eps) / (P^s_ij + eps))

The mean runs over all N² entries (not a per-row sum), eps = 1e-7 — as the authors' code that RepDistiller
(distiller_zoo/PKT.py) and mdistiller (mdistiller/distillers/PKT.py) use. Defaults from both: feat_weight = 30000,
CE weight 1, on the penultimate embedding (``feat[-1]`` / ``pooled_feat``; here ``"<classifier>:input"``, or the model's
``pre_logits_name`` before a dropout; override with ``student_layers``/``teacher_layers``, several pairs are summed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from kdlab.methods.base import Context, check_param, loss_sum
from kdlab.methods.fp32 import fp32
from kdlab.methods.paired import PairedMethod, PairedParams
from kdlab.methods.registry import METHODS


def cosine_kernel_probabilities(f: Tensor, eps: float = 1e-7) -> Tensor:
    """Row-normalized (cos + 1) / 2 similarities of the rows of ``f`` (N×N)."""
    f = f / (f.norm(dim=1, keepdim=True) + eps)
    f = torch.nan_to_num(f, nan=0.0)
    k = (f @ f.t() + 1.0) / 2.0
    return k / k.sum(dim=1, keepdim=True)


@fp32
def pkt_loss(student_feature: Tensor, teacher_feature: Tensor, eps: float = 1e-7) -> Tensor:
    """mean_ij P^t_ij · log((P^t_ij + eps) / (P^s_ij + eps)); features flattened to N×D; fp32."""
    p_s = cosine_kernel_probabilities(student_feature.flatten(1), eps)
    p_t = cosine_kernel_probabilities(teacher_feature.flatten(1).detach(), eps)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


@dataclass
class PKTParams(PairedParams):
    student_layers: list[str] = field(default_factory=list)  # default: the classifier's input (the embedding)
    teacher_layers: list[str] = field(default_factory=list)  # default: the teacher classifier's input
    feat_weight: float = 30000.0  # (mdistiller's PKT.LOSS.FEAT_WEIGHT, RepDistiller's -b)


@METHODS.register("pkt")
class PKT(PairedMethod):
    Params = PKTParams
    params: PKTParams
    layer_default = "embedding"

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, params: PKTParams | None = None) -> None:
        super().__init__(student, teacher, params)
        check_param(self.params.feat_weight >= 0, "feat_weight", f"must be >= 0, got {self.params.feat_weight}")

    def losses(self, ctx: Context) -> dict[str, Tensor]:
        total = loss_sum(pkt_loss(f_s, f_t) for f_s, f_t in self.feature_pairs(ctx))
        return {"loss_pkt": self.params.feat_weight * total}
