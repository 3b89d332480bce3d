"""Composable methods: losses over one shared forward pass, and ``a+b`` composites built from them.

A :class:`Distiller` declares what it reads (student layers, teacher layers, teacher logits) and computes its losses
from a :class:`Context`: the student's logits and hooked features from ONE student forward pass, and the teacher's
logits/features from at most one teacher forward pass. On its own, a Distiller's ``forward`` builds that context and
adds the hard cross-entropy. A :class:`Composite` (method name ``kd+fitnets``) builds the context once for all its
parts, counts the hard cross-entropy once, and sums the parts' losses, each times its ``weight``:

    method: {name: kd+fitnets, kd: {T: 4}, fitnets: {hint_weight: 100, weight: 1.0}, ce_weight: null}
    kdlab train ... method=kd+fitnets method.kd.T=4 method.fitnets.weight=0.5

``ce_weight`` (default: the smallest of the parts' own CE weights, e.g. 1−alpha when kd is a part) weights the hard
cross-entropy; the parts' own ``label_smoothing`` is ignored in favour of the composite's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
from torch import Tensor, nn

from kdlab.errors import ConfigError
from kdlab.methods.base import BaseParams, Method
from kdlab.methods.hooks import FeatureHooks


@dataclass
class Context:
    """What one forward pass produced, shared by every part of a method."""

    labels: Tensor
    logits: Tensor  # the student's, with gradients
    features: dict[str, Tensor] = field(default_factory=dict)  # student layer name -> output
    teacher_logits: Optional[Tensor] = None  # fp32, no gradients; None when no part needs the teacher
    teacher_features: dict[str, Tensor] = field(default_factory=dict)


def check_param(ok: bool, key: str, requirement: str) -> None:
    """Raise the standard one-line ConfigError naming ``method.<key>`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"config key 'method.{key}' {requirement}")


class Distiller(Method):
    """A method whose losses read a shared :class:`Context`, so that it composes with others (``a+b``)."""

    needs_prepare: ClassVar[bool] = False  # True when build() creates modules from feature shapes

    # -- what a subclass declares ------------------------------------------------------------------------------------
    def student_layers(self) -> list[str]:
        """Student module names whose outputs the method reads."""
        return []

    def reads_teacher_logits(self) -> bool:
        return False

    def ce_weight(self) -> float:
        """Weight of the hard cross-entropy on the student's logits."""
        return 1.0

    def build(self, probe: Context) -> None:
        """Create shape-dependent modules from a dry-run context (called by ``prepare``)."""

    def losses(self, ctx: Context) -> dict[str, Tensor]:
        """The method's own ``loss_*`` terms (without the hard cross-entropy)."""
        raise NotImplementedError

    # -- plumbing -----------------------------------------------------------------------------------------------------
    def prepare(self, example_images: Tensor) -> None:
        if getattr(self, "_prepared", False):  # once: a second build would orphan the optimizer's parameters
            return
        self.build(self._pass().probe(example_images[:2]))
        for module in self.extra_modules():
            module.to(example_images.device)
        self._prepared = True

    def forward(self, images: Tensor, labels: Tensor, teacher_logits: Tensor | None = None) -> dict[str, Tensor]:
        if self.needs_prepare and not getattr(self, "_prepared", False):
            raise RuntimeError(f"{type(self).__name__}: call method.prepare(images) before training")
        ctx = self._pass().run(images, labels, teacher_logits)
        out = {"logits": ctx.logits}
        if self.ce_weight():
            out["loss_ce"] = self.ce_weight() * self.hard_loss(ctx.logits, labels)
        out.update(self.losses(ctx))
        return out

    def _pass(self) -> "SharedPass":
        if getattr(self, "_shared_pass", None) is None:
            self._shared_pass = SharedPass(self)
        return self._shared_pass


class SharedPass:
    """Runs the student (and the teacher, when needed) once, with hooks on every layer the method reads."""

    def __init__(self, method: Distiller) -> None:
        self.method = method
        self.student_hooks = FeatureHooks(method.student, method.student_layers())
        t_layers = method.teacher_features()
        self.teacher_hooks = FeatureHooks(method.teacher, t_layers) if t_layers else None

    def run(self, images: Tensor, labels: Tensor, given_teacher_logits: Tensor | None) -> Context:
        m = self.method
        with self.student_hooks.capture() as feats:
            logits = m.student(images)
        ctx = Context(labels=labels, logits=logits, features=feats)
        if self.teacher_hooks is not None:  # the teacher runs anyway for its features: its live logits come free
            with torch.no_grad(), self.teacher_hooks.capture() as t_feats:
                ctx.teacher_logits = m.teacher(images).float()
            ctx.teacher_features = t_feats
        elif m.reads_teacher_logits():
            ctx.teacher_logits = m.teacher_logits(images, given_teacher_logits)
        return ctx

    @torch.no_grad()
    def probe(self, images: Tensor) -> Context:
        """A dry run in eval mode (BatchNorm statistics untouched) to read feature shapes and the number of classes."""
        student = self.method.student
        was_training = student.training
        student.eval()
        try:
            return self.run(images, torch.zeros(len(images), dtype=torch.long, device=images.device), None)
        finally:
            student.train(was_training)


# --------------------------------------------------------------------------------------------------------------------
# a+b composites
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class CompositeParams(BaseParams):
    """The composite's own keys; one section per part (``kd: {T: 4, weight: 1.0}``) is added by composite_params_cls."""

    ce_weight: Optional[float] = None  # None: the smallest of the parts' own CE weights
    part_classes: ClassVar[dict[str, type]] = {}


def composite_params_cls(parts: dict[str, type[Method]]) -> type[CompositeParams]:
    """A Params dataclass for ``+``-joined ``parts``: one section per part, its Params plus ``weight`` (default 1)."""
    fields = []
    for name, cls in parts.items():
        if not issubclass(cls, Distiller):
            raise ConfigError(f"method {name!r} cannot be combined with others (it does not use a shared forward pass)")
        section = dataclasses.make_dataclass(f"{cls.__name__}PartParams", [("weight", float, 1.0)], bases=(cls.Params,))
        fields.append((name, section, field(default_factory=section)))
    params_cls = dataclasses.make_dataclass("CompositeParams_" + "_".join(parts), fields, bases=(CompositeParams,))
    params_cls.part_classes = dict(parts)
    return params_cls


class Composite(Distiller):
    """Several Distillers sharing one forward pass; built by the factory from a name like ``kd+fitnets``."""

    Params = CompositeParams
    needs_teacher = False  # checked per part below

    def __init__(self, student: nn.Module, teacher: nn.Module | None, params: CompositeParams) -> None:
        super().__init__(student, teacher, params)
        parts = {}
        for name, cls in params.part_classes.items():
            try:
                parts[name] = cls(student, teacher, getattr(params, name))
            except ConfigError as exc:  # name the key as the user wrote it: method.<part>.<key>
                raise ConfigError(str(exc).replace("method.", f"method.{name}.")) from None
        self.parts: dict[str, Distiller] = parts  # a plain dict: the parts share our student and teacher
        self.extras = nn.ModuleDict()
        self._register_extras()

    def _register_extras(self) -> None:
        for name, part in self.parts.items():
            self.extras[name] = nn.ModuleList(part.extra_modules())

    @property
    def needs_prepare(self) -> bool:  # type: ignore[override]
        return any(p.needs_prepare for p in self.parts.values())

    def student_layers(self) -> list[str]:
        return list(dict.fromkeys(n for p in self.parts.values() for n in p.student_layers()))

    def teacher_features(self) -> list[str]:
        return list(dict.fromkeys(n for p in self.parts.values() for n in p.teacher_features()))

    def reads_teacher_logits(self) -> bool:
        return any(p.reads_teacher_logits() for p in self.parts.values())

    def ce_weight(self) -> float:
        if self.params.ce_weight is not None:
            return self.params.ce_weight
        return min(p.ce_weight() for p in self.parts.values())

    def extra_modules(self) -> list[nn.Module]:
        return [m for p in self.parts.values() for m in p.extra_modules()]

    def build(self, probe: Context) -> None:
        for part in self.parts.values():
            part.build(probe)
            part._prepared = True
        self._register_extras()

    def losses(self, ctx: Context) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for name, part in self.parts.items():
            for key, value in part.losses(ctx).items():
                out[key if key not in out else f"loss_{name}_{key[len('loss_'):]}"] = part.params.weight * value
        return out

    def train(self, mode: bool = True) -> "Composite":
        super().train(mode)
        for part in self.parts.values():
            part.train(mode)
        return self

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        for part in self.parts.values():
            part.on_epoch_start(epoch, epochs)
