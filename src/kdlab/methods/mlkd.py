"""``mlkd``: multi-level logit distillation (Jin, Wang & Lin 2023, "Multi-Level Logit Distillation", CVPR).

Align the predictions at three levels, each over several temperatures T ∈ {2, 3, 4, 5, 6} ("prediction
augmentation"). With P = softmax(z / T) the B×K predictions of a batch (student P_s, teacher P_t):

    instance: T² · KL(P_t ‖ P_s)                           (summed over classes, averaged over the batch)
    batch:    ‖P_t P_tᵀ − P_s P_sᵀ‖²_F / B                  (B×B: how alike the images are)
    class:    ‖P_tᵀ P_t − P_sᵀ P_s‖²_F / K                  (K×K: how the classes co-occur)

The reference (Jin-Ying/Multi-Level-Logit-Distillation, mdistiller/distillers/KD_ours.py, trainer "ours") trains on a
weak and a strong augmented view; its loss, with w = KD_WEIGHT 0.9 and CE_WEIGHT 0.1 (mdistiller's KD defaults, which
its configs keep), is

    0.1·(CE_weak + CE_strong) + w·Σ_T [ m·inst_weak + inst_strong + m·batch_weak + m_c·class_weak ]

where m and m_c come from the teacher's weak-view confidence: the fraction of images whose max probability is ≤ the
batch median, and of classes whose summed probability is ≤ the median (the reference multiplies each already-averaged
term by its boolean mask and averages, so the mask acts as this fraction, ≈ ½). kdlab has one view: it stands for both
the weak and the strong one, which gives

    L = 0.2·CE + w·Σ_T [ (1 + m)·instance + m·batch + m_c·class ]

Defaults accordingly: temperatures [2, 3, 4, 5, 6], kd_weight = 0.9, ce_weight = 0.2. Deviation: no strong
augmentation (the reference's RandAugment-style view), so its accuracies need that second view; its other quirks are
moot with one view (two of its "strong" instance terms read the weak view; its strong-view batch and class terms are
computed but unused). Logits only: precomputed teacher logits can replace the teacher.

``logit_standardization=true`` Z-scores both logits per sample (Sun et al. 2024, logits.py) in the *instance* term
only, as the authors' MLKD code (sunshangquan/logit-standardization-KD, mdistiller/distillers/MLKD.py) does; its
setting replaces the base temperature 4 by 2 and w by 9 (tools/train.py ``--base-temp 2 --kd-weight 9``):
``method.temperatures=[2,2,3,5,6] method.kd_weight=9``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from kdlab.methods.base import BaseParams, Context, Method, check_param
from kdlab.methods.fp32 import fp32
from kdlab.methods.kd import kd_loss
from kdlab.methods.logits import standardize
from kdlab.methods.registry import METHODS


def batch_correlation_loss(p_s: Tensor, p_t: Tensor) -> Tensor:
    """‖P_t P_tᵀ − P_s P_sᵀ‖²_F / B."""
    return (p_t @ p_t.t() - p_s @ p_s.t()).pow(2).sum() / p_s.shape[0]


def class_correlation_loss(p_s: Tensor, p_t: Tensor) -> Tensor:
    """‖P_tᵀ P_t − P_sᵀ P_s‖²_F / K."""
    return (p_t.t() @ p_t - p_s.t() @ p_s).pow(2).sum() / p_s.shape[1]


def fraction_below_median(x: Tensor) -> Tensor:
    """Fraction of the entries ≤ their median (linear interpolation, as numpy.percentile(x, 50))."""
    return (x <= torch.quantile(x, 0.5)).float().mean()


@fp32
def mlkd_loss(student_logits: Tensor, teacher_logits: Tensor, temperatures: list[float], kd_weight: float = 0.9,
              standardized: bool = False) -> dict[str, Tensor]:
    """The weighted instance, batch and class terms of one view standing for both reference views; fp32."""
    z_s, z_t = student_logits, teacher_logits.detach()
    p_t1 = z_t.softmax(dim=1)
    m = fraction_below_median(p_t1.max(dim=1).values)
    m_class = fraction_below_median(p_t1.sum(dim=0))
    zi_s, zi_t = (standardize(z_s), standardize(z_t)) if standardized else (z_s, z_t)
    instance = sum(kd_loss(zi_s, zi_t, T) for T in temperatures)
    batch = class_ = z_s.new_zeros(())
    for T in temperatures:
        p_s, p_t = (z_s / T).softmax(dim=1), (z_t / T).softmax(dim=1)
        batch = batch + batch_correlation_loss(p_s, p_t)
        class_ = class_ + class_correlation_loss(p_s, p_t)
    return {"instance": kd_weight * (1.0 + m) * instance, "batch": kd_weight * m * batch,
            "class": kd_weight * m_class * class_}


@dataclass
class MLKDParams(BaseParams):
    temperatures: list[float] = field(default_factory=lambda: [2.0, 3.0, 4.0, 5.0, 6.0])  # prediction augmentation
    kd_weight: float = 0.9  # w, on every term (the reference's KD.LOSS.KD_WEIGHT)
    ce_weight: float = 0.2  # the reference's 0.1 on each of its two views
    logit_standardization: bool = False  # Z-score the logits of the instance term (Sun et al. 2024)


@METHODS.register("mlkd")
class MLKD(Method):
    Params = MLKDParams
    params: MLKDParams

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, params: MLKDParams | None = None) -> None:
        super().__init__(student, teacher, params)
        p = self.params
        check_param(len(p.temperatures) > 0 and all(T > 0 for T in p.temperatures), "temperatures",
                    f"must be a non-empty list of positive temperatures, got {p.temperatures}")
        check_param(p.kd_weight >= 0, "kd_weight", f"must be >= 0, got {p.kd_weight}")
        check_param(p.ce_weight >= 0, "ce_weight", f"must be >= 0, got {p.ce_weight}")

    def reads_teacher_logits(self) -> bool:
        return True

    def ce_weight(self) -> float:
        return self.params.ce_weight

    def losses(self, ctx: Context) -> dict[str, Tensor]:
        p, z_t = self.params, ctx.require_teacher_logits()
        terms = mlkd_loss(ctx.logits, z_t, list(p.temperatures), p.kd_weight, p.logit_standardization)
        return {f"loss_mlkd_{name}": value for name, value in terms.items()}
