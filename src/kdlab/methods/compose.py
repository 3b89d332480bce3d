"""``a+b`` composites: several methods over one shared forward pass.

A :class:`Composite` (method name ``kd+fitnets``) builds the :class:`~kdlab.methods.base.Context` once for all its
parts (one student pass with every part's hooks, at most one teacher pass), counts the hard cross-entropy once, and
sums the parts' losses, each times its ``weight``:

    method: {name: kd+fitnets, kd: {T: 4}, fitnets: {hint_weight: 100, weight: 1.0}, ce_weight: null}
    kdlab train ... method=kd+fitnets method.kd.T=4 method.fitnets.weight=0.5

``ce_weight`` (default: the smallest of the parts' own CE weights, e.g. 1−alpha when kd is a part) weights the hard
cross-entropy; the parts' own ``label_smoothing`` is ignored in favour of the composite's. A method whose
``composable`` is False (it runs its own forward pass, as ``dml``) cannot be a part.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from torch import Tensor, nn

from kdlab.errors import ConfigError
from kdlab.methods.base import BaseParams, Context, Method, Setup


# --------------------------------------------------------------------------------------------------------------------
# a+b composites
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class CompositeParams(BaseParams):
    """The composite's own keys; one section per part (``kd: {T: 4, weight: 1.0}``) is added by composite_params_cls."""

    ce_weight: Optional[float] = None  # None: the smallest of the parts' own CE weights
    part_classes: ClassVar[dict[str, type[Method]]] = {}


def composite_params_cls(parts: dict[str, type[Method]]) -> type[CompositeParams]:
    """A Params dataclass for ``+``-joined ``parts``: one section per part, its Params plus ``weight`` (default 1)."""
    fields = []
    for name, cls in parts.items():
        if not cls.composable:
            raise ConfigError(f"method {name!r} cannot be combined with others (it does not use a shared forward pass)")
        section = dataclasses.make_dataclass(f"{cls.__name__}PartParams", [("weight", float, 1.0)], bases=(cls.Params,))
        fields.append((name, section, field(default_factory=section)))
    params_cls: type[CompositeParams] = dataclasses.make_dataclass(
        "CompositeParams_" + "_".join(parts), fields, bases=(CompositeParams,))
    params_cls.part_classes = dict(parts)
    return params_cls


class Composite(Method):
    """Several methods sharing one forward pass; built by the factory from a name like ``kd+fitnets``."""

    Params = CompositeParams
    params: CompositeParams
    needs_teacher = False  # checked per part below

    def __init__(self, student: nn.Module, teacher: nn.Module | None, params: CompositeParams) -> None:
        super().__init__(student, teacher, params)
        parts = {}
        for name, cls in params.part_classes.items():
            try:
                parts[name] = cls(student, teacher, getattr(params, name))
            except ConfigError as exc:  # name the key as the user wrote it: method.<part>.<key>
                raise ConfigError(str(exc).replace("method.", f"method.{name}.")) from None
        self.parts: dict[str, Method] = parts  # a plain dict: the parts share our student and teacher
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

    def teacher_layers(self) -> list[str]:
        return list(dict.fromkeys(n for p in self.parts.values() for n in p.teacher_layers()))

    def reads_teacher_logits(self) -> bool:
        return any(p.reads_teacher_logits() for p in self.parts.values())

    def ce_weight(self) -> float:
        if self.params.ce_weight is not None:
            return self.params.ce_weight
        return min(p.ce_weight() for p in self.parts.values())

    def extra_modules(self) -> list[nn.Module]:
        return [m for p in self.parts.values() for m in p.extra_modules()]

    def loss_groups(self) -> dict[str, float]:
        groups: dict[str, float] = {}  # the parts' declarations merged; the first part to name a term wins
        for part in self.parts.values():
            groups = {**part.loss_groups(), **groups}
        return groups

    def build(self, setup: Setup) -> None:
        for part in self.parts.values():
            part.build(setup)
            part.prepared = True
        self._register_extras()

    def losses(self, ctx: Context) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for name, part in self.parts.items():
            for key, value in part.losses(ctx).items():
                out[key if key not in out else f"loss_{name}_{key[len('loss_'):]}"] = self.part_weight(name) * value
        return out

    def part_weight(self, name: str) -> float:
        """The weight of part ``name`` in the sum (its section's ``weight`` key)."""
        weight: float = getattr(self.params, name).weight
        return weight

    def replace_teacher(self, teacher: nn.Module) -> None:
        super().replace_teacher(teacher)
        for part in self.parts.values():
            part.teacher = self.teacher

    def train(self, mode: bool = True) -> "Composite":
        super().train(mode)
        for part in self.parts.values():
            part.train(mode)
        return self

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        for part in self.parts.values():
            part.on_epoch_start(epoch, epochs)
