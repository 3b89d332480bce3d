"""Base of the methods that read student and teacher layers in pairs (rkd, pkt, sp, nst, vid, cc, crd, reviewkd).

The pairs come from the method's ``student_layers``/``teacher_layers`` params through
:func:`kdlab.methods.hooks.layer_pairs`; an empty list means the method's default (``layer_default``): every stage,
the last stage, or the penultimate embedding before any dropout (the model's ``pre_logits_name``, else
``"<classifier>:input"``; see :func:`kdlab.methods.hooks.embedding_layers`). Any ``nn.Module`` works: layers are read by
forward hooks on dotted module names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor, nn

from kdlab.methods.base import BaseParams, Context, Method
from kdlab.methods.hooks import layer_pairs


@dataclass
class PairedParams(BaseParams):
    """The keys every paired method has (its own Params repeat them with their defaults documented)."""

    student_layers: list[str] = field(default_factory=list)  # default: the method's ``layer_default``
    teacher_layers: list[str] = field(default_factory=list)


class PairedMethod(Method):
    Params = PairedParams
    params: PairedParams
    layer_default: ClassVar[str] = "stages"  # "stages", "last" or "embedding"

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None,
                 params: PairedParams | None = None) -> None:
        super().__init__(student, teacher, params)
        self.s_layers, self.t_layers = self.resolve_pairs(student, self.require_teacher())

    def resolve_pairs(self, student: nn.Module, teacher: nn.Module) -> tuple[list[str], list[str]]:
        """The student and teacher layers read in pairs (from the params, else ``layer_default``)."""
        p = self.params
        return layer_pairs(student, teacher, p.student_layers, p.teacher_layers, self.layer_default)

    def student_layers(self) -> list[str]:
        return self.s_layers

    def teacher_layers(self) -> list[str]:
        return self.t_layers

    def feature_pairs(self, ctx: Context) -> list[tuple[Tensor, Tensor]]:
        """(student feature, teacher feature) for every pair, shallow to deep."""
        return [(ctx.features[s], ctx.teacher_features[t]) for s, t in zip(self.s_layers, self.t_layers)]
