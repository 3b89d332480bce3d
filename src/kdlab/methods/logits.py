"""Logit pre-processing shared by the logit methods: the Z-score of Sun et al. 2024.

Logit standardization (Sun, Ren, Li, Wang & Cao 2024, "Logit Standardization in Knowledge Distillation", CVPR):
before the temperature softmax, each sample's logits (teacher and student separately) are Z-scored,

    Z(z) = (z − mean_k z) / (std_k z + 1e-7)          (std with Bessel's correction, as ``torch.std``)

so the student matches the teacher's logit *relations* rather than their range and scale. The eps and the unbiased
std are those of the authors' code (sunshangquan/logit-standardization-KD, ``normalize`` in
mdistiller/distillers/KD.py, DKD.py, MLKD.py). A boolean ``logit_standardization`` param (default False) switches it on
in ``kd``, ``dkd``, ``dist`` and ``mlkd``; each method's docstring gives the paper's temperature and weights.
"""

from __future__ import annotations

from torch import Tensor

EPS = 1e-7


def standardize(logits: Tensor, eps: float = EPS) -> Tensor:
    """Per-row Z-score of N×K logits, in fp32: (z − mean) / (unbiased std + eps)."""
    z = logits.float()
    return (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + eps)


def prepare_logits(student_logits: Tensor, teacher_logits: Tensor, standardized: bool) -> tuple[Tensor, Tensor]:
    """Both logits in fp32, Z-scored when ``standardized``."""
    if standardized:
        return standardize(student_logits), standardize(teacher_logits)
    return student_logits.float(), teacher_logits.float()
