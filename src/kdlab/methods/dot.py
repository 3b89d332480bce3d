"""``dot``: KD trained by the Distillation-Oriented Trainer (Zhao, Song & Qiu 2023, ICCV, "DOT: A Distillation-Oriented
Trainer").

The loss is KD's (see kd.py): L = (1 − alpha) · CE + alpha · T² · KL. What changes is the optimizer step: SGD keeps
*separate* momentum buffers for the gradient of the task loss (CE) and for that of the distillation loss, with a
larger momentum for the distillation one, so that its direction dominates the update:

    b_ce ← (beta − delta) · b_ce + ∇L_ce      b_kd ← (beta + delta) · b_kd + ∇L_kd      θ ← θ − lr · (b_ce + b_kd)

beta = ``optim.momentum``. Reference: megvii-research/mdistiller ``mdistiller/engine/dot.py`` (the
``DistillationOrientedTrainer`` optimizer) with ``DOT.DELTA = 0.075`` in every config (CIFAR-100, Tiny-ImageNet and
ImageNet) and the KD distiller's CE 0.1 / KD 0.9 / T = 4 on CIFAR-100. As there, weight decay enters the task
gradient, a parameter reached by only one of the two losses uses momentum beta, the first step sets each buffer to its
gradient, and there is no dampening. The reference has no Nesterov: set ``optim.nesterov=false`` to match it (kdlab's
default Nesterov is applied to each buffer).

Mechanism: :meth:`loss_groups` declares ``{"loss_ce": −delta, "*": +delta}``; the engine then builds its per-loss
momentum SGD (engine/optim.py) and backpropagates each group separately (two backward passes per step, as the
reference). It needs ``optim.name=sgd``. As a part of a composite (``dot+fitnets``), every term other than the CE gets
the distillation momentum.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from kdlab.methods.base import check_param
from kdlab.methods.kd import KD, KDParams
from kdlab.methods.registry import METHODS


@dataclass
class DOTParams(KDParams):
    delta: float = 0.075  # momentum offset: distillation beta + delta, task (CE) beta − delta


@METHODS.register("dot")
class DOT(KD):
    Params = DOTParams
    params: DOTParams

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, params: DOTParams | None = None) -> None:
        super().__init__(student, teacher, params)
        check_param(0 <= self.params.delta < 1, "delta", f"must be in [0, 1), got {self.params.delta}")

    def loss_groups(self) -> dict[str, float]:
        return {"loss_ce": -self.params.delta, "*": self.params.delta}
