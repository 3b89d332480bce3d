"""The one interface every training objective implements.

A method is an ``nn.Module`` built from a student, an optional frozen teacher and its typed hyperparameters
(``Params``, a dataclass beside the code). ``forward(images, labels, teacher_logits=None)`` returns
``{"logits": student_logits, "loss_<part>": scalar, ...}``; the engine sums the ``loss_*`` parts, logs each one, and
knows nothing else about the method.

- The teacher is frozen: no gradients, and kept in ``eval()`` whatever ``train()`` is called with (its BatchNorm
  statistics must not drift during distillation).
- ``students()`` names the modules that are evaluated and saved (``"student"`` first); ``extra_modules()`` holds the
  modules that train with them but are thrown away afterwards (adapters, auxiliary heads).
- ``teacher_features()`` declares what the method reads from the teacher: ``[]`` means logits only, so precomputed
  teacher logits (``teacher_logits=``) can replace the teacher's forward pass.
- ``prepare(example_images)`` is called once before the optimizer is built: methods whose adapters depend on feature
  shapes create them there (one dry-run forward pass), so every trainable parameter exists from the first step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.errors import ConfigError


@dataclass
class BaseParams:
    """Hyperparameters every method has."""

    label_smoothing: float = 0.0  # on the hard-label cross-entropy term


class Method(nn.Module):
    Params: ClassVar[type] = BaseParams
    needs_teacher: ClassVar[bool] = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, params: BaseParams | None = None) -> None:
        super().__init__()
        if self.needs_teacher and teacher is None:
            raise ConfigError(f"method {type(self).__name__.lower()!r} needs a teacher (teacher=CHECKPOINT)")
        self.student = student
        self.params = params if params is not None else self.Params()
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()

    # -- what the engine and the runner use ---------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Method":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def students(self) -> dict[str, nn.Module]:
        """Modules that are evaluated and saved, the main student first."""
        return {"student": self.student}

    def extra_modules(self) -> list[nn.Module]:
        """Modules trained with the students but not saved with them (adapters, auxiliary heads)."""
        return []

    def teacher_features(self) -> list[str]:
        """Teacher module names whose outputs the method reads; [] means it needs the teacher's logits only."""
        return []

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = [p for m in self.students().values() for p in m.parameters()]
        params += [p for m in self.extra_modules() for p in m.parameters()]
        return [p for p in params if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Everything needed to resume (students and extra modules), without the frozen teacher."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("teacher.")]
        if missing or unexpected:
            raise ValueError(f"checkpoint does not fit the objective: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Called by the engine before each epoch (0-based); for schedules inside a method (e.g. loss warm-up)."""

    def prepare(self, example_images: Tensor) -> None:
        """Create the modules whose shapes depend on the models' feature maps (adapters, heads).

        Called once by the runner with a batch of training images (already on the device), after the method is moved
        to the device and before the optimizer is built or a checkpoint is loaded. A no-op for logits-only methods.
        """

    # -- helpers for subclasses ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_logits(self, images: Tensor, given: Tensor | None) -> Tensor:
        """The teacher's logits for ``images``: the precomputed ones when given, else a no-grad forward pass."""
        if given is not None:
            return given.float()
        assert self.teacher is not None
        return self.teacher(images).float()

    def hard_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy on the labels, computed in fp32 even under autocast."""
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.params.label_smoothing)

    def forward(self, images: Tensor, labels: Tensor, teacher_logits: Tensor | None = None) -> dict[str, Tensor]:
        raise NotImplementedError
