"""``ce``: plain cross-entropy on the labels — the baseline student, and how a teacher is trained.

    L = CE(y, softmax(z_s))          (optionally with label smoothing)
"""

from __future__ import annotations

from torch import Tensor

from kdlab.methods.base import Method
from kdlab.methods.registry import METHODS


@METHODS.register("ce")
class CE(Method):
    needs_teacher = False

    def forward(self, images: Tensor, labels: Tensor, teacher_logits: Tensor | None = None) -> dict[str, Tensor]:
        logits = self.student(images)
        return {"logits": logits, "loss_ce": self.hard_loss(logits, labels)}
