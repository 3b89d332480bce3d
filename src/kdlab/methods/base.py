"""The one interface every method implements: ``ce``, the distillation methods and their ``a+b`` combinations.

A method is an ``nn.Module`` built from a student, an optional frozen teacher and its typed hyperparameters
(``Params``, a dataclass beside the code). ``forward(batch)`` takes a :class:`kdlab.batch.Batch` and returns
``{"logits": student_logits, "loss_<part>": scalar, ...}``; the engine sums the ``loss_*`` parts, logs each one, and
knows nothing else about the method.

What a method declares (all optional):

- ``student_layers()`` / ``teacher_layers()``: module names whose outputs it reads (forward hooks, any ``nn.Module``);
- ``reads_teacher_logits()``: whether it reads the teacher's logits; a method that reads logits and no teacher
  layer can be given them precomputed (``batch.teacher_logits``), so the teacher need not run;
- ``ce_weight()``: the weight of the hard cross-entropy on the labels (default 1);
- ``loss_groups()``: separate SGD momenta per group of loss terms (DOT), applied by the engine's optimizer;
- ``build(setup)``: creates its shape-dependent modules (adapters, heads, memory banks) from a :class:`Setup`;
- ``losses(ctx)``: its own ``loss_*`` terms from a :class:`Context`: one student pass (and at most one teacher pass)
  with every hooked feature, shared by every part of a composite.

The teacher is frozen: no gradients, and kept in ``eval()`` whatever ``train()`` is called with (its BatchNorm
statistics must not drift). ``students()`` names the modules that are evaluated and saved (``"student"`` first);
``extra_modules()`` those that train with them and are thrown away afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Iterable, Optional, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.batch import Batch
from kdlab.errors import ConfigError
from kdlab.methods.hooks import FeatureHooks


@dataclass
class BaseParams:
    """Hyperparameters every method has."""

    label_smoothing: float = 0.0  # on the hard-label cross-entropy term


@dataclass
class Context:
    """What one forward pass produced, shared by every part of a method."""

    batch: Batch
    logits: Tensor  # the student's, with gradients
    features: dict[str, Tensor] = field(default_factory=dict)  # student layer name -> output
    teacher_logits: Optional[Tensor] = None  # fp32, no gradients; None when no part needs the teacher
    teacher_features: dict[str, Tensor] = field(default_factory=dict)

    @property
    def labels(self) -> Tensor:
        return self.batch.labels

    def require_teacher_logits(self) -> Tensor:
        """The teacher's logits, for a method that reads them (``reads_teacher_logits()`` or a teacher layer)."""
        if self.teacher_logits is None:
            raise RuntimeError("this method reads the teacher's logits, but the forward pass produced none: "
                               "its reads_teacher_logits() must return True")
        return self.teacher_logits


@dataclass
class Setup:
    """What a method may size itself by before training: :meth:`Method.prepare` fills ``probe``."""

    example: Tensor  # a few training images, on the device
    probe: Context  # a dry-run forward pass of ``example`` in eval mode
    num_samples: int = 0  # size of the training split (memory banks are sized by it)
    num_classes: int = 0  # the probe's number of logits unless given


def loss_sum(terms: Iterable[Tensor]) -> Tensor:
    """Σ of one or more loss terms, left to right as Python's ``sum`` adds them (so the values are unchanged)."""
    return cast(Tensor, sum(terms))


def check_param(ok: bool, key: str, requirement: str) -> None:
    """Raise the standard one-line ConfigError naming ``method.<key>`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"config key 'method.{key}' {requirement}")


ModuleT = TypeVar("ModuleT", bound=nn.Module)


class Method(nn.Module):
    Params: ClassVar[type[BaseParams]] = BaseParams
    needs_teacher: ClassVar[bool] = True
    composable: ClassVar[bool] = True  # False: it cannot be a part of a+b (it runs its own forward pass)
    needs_prepare: ClassVar[bool] = False  # True: build() creates modules, so prepare() must run before training

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, params: BaseParams | None = None) -> None:
        super().__init__()
        if self.needs_teacher and teacher is None:
            raise ConfigError(f"method {type(self).__name__.lower()!r} needs a teacher (teacher=CHECKPOINT)")
        self.student = student
        self.params: BaseParams = params if params is not None else self.Params()  # subclasses narrow its type
        self.teacher: nn.Module | None = teacher
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
        self.prepared = False
        self._shared_pass: SharedPass | None = None

    # -- what a subclass declares --------------------------------------------------------------------------------------
    def student_layers(self) -> list[str]:
        """Student module names whose outputs the method reads."""
        return []

    def teacher_layers(self) -> list[str]:
        """Teacher module names whose outputs the method reads; [] means it needs the teacher's logits at most."""
        return []

    def reads_teacher_logits(self) -> bool:
        return False

    def ce_weight(self) -> float:
        """Weight of the hard cross-entropy on the student's logits."""
        return 1.0

    def loss_groups(self) -> dict[str, float]:
        """Per-loss-term SGD momenta: ``{term or "*": momentum offset}``; {} (default): one momentum for the sum.

        When not empty, the engine backpropagates each group of ``loss_*`` terms separately and keeps one momentum
        buffer per group, with momentum ``optim.momentum + offset`` ("*" is every term not named): DOT's mechanism.
        """
        return {}

    def build(self, setup: Setup) -> None:
        """Create shape-dependent modules from ``setup`` (its ``probe`` holds a dry run's features)."""

    def losses(self, ctx: Context) -> dict[str, Tensor]:
        """The method's own ``loss_*`` terms (without the hard cross-entropy)."""
        return {}

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
        """Modules trained with the students but not saved with them (adapters, auxiliary heads, memory banks)."""
        return []

    def replace_teacher(self, teacher: nn.Module) -> None:
        """Swap the frozen teacher for an equivalent module (e.g. with BatchNorm folded) before the first forward pass:
        the module names the method reads must exist in it."""
        if self._shared_pass is not None:
            raise RuntimeError("replace_teacher() must come before the method's first forward pass")
        self.teacher = teacher.requires_grad_(False).eval()

    def uses_teacher_logits_only(self) -> bool:
        """True when precomputed teacher logits can stand in for the teacher's forward pass."""
        return self.reads_teacher_logits() and not self.teacher_layers()

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
            raise ValueError(f"checkpoint does not fit the method: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Called by the engine before each epoch (0-based); for schedules inside a method (e.g. loss warm-up)."""

    def prepare(self, example: Tensor, num_samples: int = 0, num_classes: int = 0) -> None:
        """Build the method's shape-dependent modules once, from a few training images already on the device.

        Called by the runner after the method is moved to the device and before the optimizer is built or a
        checkpoint is loaded, so every trainable parameter exists from the first step.
        """
        if self.prepared:  # once: a second build would orphan the optimizer's parameters
            return
        example = example[:2]
        probe = self.shared_pass().probe(example)
        self.build(Setup(example, probe, num_samples, num_classes or probe.logits.shape[1]))
        for module in self.extra_modules():
            module.to(example.device)
        self.prepared = True

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        if self.needs_prepare and not self.prepared:
            raise RuntimeError(f"{type(self).__name__}: call method.prepare(images) before training")
        ctx = self.shared_pass().run(batch)
        out = {"logits": ctx.logits}
        if self.ce_weight():
            out["loss_ce"] = self.ce_weight() * self.hard_loss(ctx.logits, batch.labels)
        out.update(self.losses(ctx))
        return out

    # -- helpers for subclasses ---------------------------------------------------------------------------------------
    def hard_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy on the labels, computed in fp32 even under autocast."""
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.params.label_smoothing)

    def require_teacher(self) -> nn.Module:
        """The frozen teacher, for code that reads it; a clear error when the method was built without one."""
        if self.teacher is None:
            raise ConfigError(f"method {type(self).__name__.lower()!r} needs a teacher (teacher=CHECKPOINT)")
        return self.teacher

    def built(self, module: ModuleT | None) -> ModuleT:
        """``module`` as created by :meth:`build`; a clear error when :meth:`prepare` has not run yet."""
        if module is None:
            raise RuntimeError(f"{type(self).__name__}: call method.prepare(images) before training")
        return module

    def shared_pass(self) -> "SharedPass":
        if self._shared_pass is None:  # hooks are registered on first use, after a composite has its parts
            self._shared_pass = SharedPass(self)
        return self._shared_pass


class SharedPass:
    """Runs the student (and the teacher, when needed) once, with hooks on every layer the method reads."""

    def __init__(self, method: Method) -> None:
        self.method = method
        self.student_hooks = FeatureHooks(method.student, method.student_layers())
        t_layers = method.teacher_layers()
        self.teacher_hooks = FeatureHooks(method.require_teacher(), t_layers) if t_layers else None

    def run(self, batch: Batch) -> Context:
        m = self.method
        with self.student_hooks.capture() as feats:
            logits = m.student(batch.images)
        ctx = Context(batch=batch, logits=logits, features=feats)
        if self.teacher_hooks is not None:  # the teacher runs anyway for its features: its live logits come free
            with torch.no_grad(), self.teacher_hooks.capture() as t_feats:
                ctx.teacher_logits = m.require_teacher()(batch.images).float()
            ctx.teacher_features = t_feats
        elif m.reads_teacher_logits():
            ctx.teacher_logits = self.teacher_logits(batch)
        return ctx

    @torch.no_grad()
    def teacher_logits(self, batch: Batch) -> Tensor:
        """The teacher's logits for the batch: the given ones when the batch carries them, else a forward pass."""
        if batch.teacher_logits is not None:
            return batch.teacher_logits.float()
        return self.method.require_teacher()(batch.images).float()

    @torch.no_grad()
    def probe(self, images: Tensor) -> Context:
        """A dry run in eval mode (BatchNorm statistics untouched) to read feature shapes and the number of classes."""
        student = self.method.student
        was_training = student.training
        student.eval()
        try:
            labels = torch.zeros(len(images), dtype=torch.long, device=images.device)
            return self.run(Batch(images, labels, index=torch.zeros_like(labels)))
        finally:
            student.train(was_training)
