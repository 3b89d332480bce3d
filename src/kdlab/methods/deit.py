"""``deit``: distillation through a distillation token (Touvron, Cord, Douze, Massa, Sablayrolles & Jégou 2021, ICML,
"Training data-efficient image transformers & distillation through attention").

A distilled DeiT has two heads: ``head`` on the class token, trained on the labels, and ``head_dist`` on the
distillation token, trained on the teacher. With z_cls and z_dist their logits (read by forward hooks on the two
modules), y the label and z_t the teacher's logits:

    hard:  L = (1 − alpha) · CE(z_cls, y) + alpha · CE(z_dist, argmax z_t)
    soft:  L = (1 − alpha) · CE(z_cls, y) + alpha · τ² · KL(softmax(z_t/τ) ‖ softmax(z_dist/τ))

Reference: facebookresearch/deit ``losses.py`` (``DistillationLoss``) and ``main.py`` defaults: alpha = 0.5, τ = 1 (its
default ``--distillation-type`` is ``none``; the paper's best, and ours, is ``hard``). Where the code departs from the
paper: its soft KL is summed and divided by ``outputs_kd.numel()`` = N·K (legacy PyTorch "mean"), not by the batch
N; kept here for fidelity (``soft_reduction="numel"``), ``"batch"`` divides by N as the paper's KL would.

The student is timm's distilled ViT (or any module with ``head`` and ``head_dist``): at evaluation its output is the
mean of the two heads, as timm's ``VisionTransformerDistilled`` returns when ``distilled_training`` is off. A student
without ``head_dist`` is a ConfigError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.errors import ConfigError
from kdlab.methods.base import BaseParams, Context, Method, check_param
from kdlab.methods.registry import METHODS


def deit_distill_loss(dist_logits: Tensor, teacher_logits: Tensor, kind: str, tau: float = 1.0,
                      soft_reduction: str = "numel") -> Tensor:
    """CE to the teacher's argmax (``hard``) or τ²·KL (``soft``, summed / N·K or / N); fp32."""
    z_d, z_t = dist_logits.float(), teacher_logits.float()
    if kind == "hard":
        return F.cross_entropy(z_d, z_t.argmax(dim=1))
    kl = F.kl_div(F.log_softmax(z_d / tau, dim=1), F.log_softmax(z_t / tau, dim=1), reduction="sum", log_target=True)
    return kl * tau * tau / (z_d.numel() if soft_reduction == "numel" else z_d.shape[0])


@dataclass
class DeiTParams(BaseParams):
    distillation_type: Literal["hard", "soft"] = "hard"
    alpha: float = 0.5  # weight of the distillation-token term; the class-token CE gets 1 − alpha
    tau: float = 1.0  # temperature of the soft variant
    soft_reduction: Literal["numel", "batch"] = "numel"  # soft KL divided by N·K (reference code) or N
    cls_head: str = "head"  # the class token's head (timm's name)
    dist_head: str = "head_dist"  # the distillation token's head (timm's name)


@METHODS.register("deit")
class DeiT(Method):
    Params = DeiTParams
    params: DeiTParams

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, params: DeiTParams | None = None) -> None:
        super().__init__(student, teacher, params)
        p = self.params
        check_param(0.0 <= p.alpha <= 1.0, "alpha", f"must be in [0, 1], got {p.alpha}")
        check_param(p.tau > 0, "tau", f"must be > 0, got {p.tau}")
        for key in ("cls_head", "dist_head"):
            name = getattr(p, key)
            try:
                student.get_submodule(name)
            except AttributeError:
                raise ConfigError(f"method 'deit' needs a distilled student with a {name!r} module (method.{key}); "
                                  f"{type(student).__name__} has none (use a distilled DeiT)") from None

    def student_layers(self) -> list[str]:
        return [self.params.cls_head, self.params.dist_head]

    def reads_teacher_logits(self) -> bool:
        return True

    def ce_weight(self) -> float:
        return 0.0  # the label CE is on the class token's head alone (below), not on the averaged output

    def losses(self, ctx: Context) -> dict[str, Tensor]:
        p = self.params
        z_cls, z_dist = ctx.features[p.cls_head], ctx.features[p.dist_head]
        z_t = ctx.require_teacher_logits()
        out = {"loss_deit": p.alpha * deit_distill_loss(z_dist, z_t, p.distillation_type, p.tau, p.soft_reduction)}
        if p.alpha < 1:
            out["loss_ce"] = (1 - p.alpha) * self.hard_loss(z_cls, ctx.labels)
        return out
