"""Several teachers as one: an ensemble teacher module whose logits combine its members' (``teacher: [a, b, ...]``).

Multi-teacher distillation in its simplest, method-agnostic form (e.g. You, Xu, Xu & Tao 2017, "Learning from
Multiple Teacher Networks", KDD; Fukuda et al. 2017, Interspeech): the student learns from one combined teacher
output, so every logits method (``kd``, ``dkd``, ``deit``, ``ofa``, ...) works unchanged. With members' logits
z_1..z_M for a sample and weights w_m >= 0:

    mean:       z = Σ_m w_m · z_m / Σ_m w_m                      (default w_m = 1: the plain average)
    confident:  z = z_{m*},  m* = argmax_m max_k softmax(z_m)_k    (per sample; ties go to the first teacher)

The members are submodules ``t0``, ``t1``, ... so a feature method may read one member's layers by name
(``method.teacher_layers=[t0.layer3]``); the single-model names a method would default to (a model's
``stage_names``, ``pre_logits_name``) do not exist on an ensemble, and reading them is a one-line ConfigError that
says to name layers per teacher. Each member keeps its own input view (:mod:`kdlab.runs.views`): a 56-px teacher
and a 28-px one each see the student's batch as they were trained on it.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from kdlab.engine.inference import fold_batchnorm
from kdlab.errors import ConfigError
from kdlab.runs.views import InputView, give_view

Mode = Literal["mean", "confident"]
MODES = ("mean", "confident")


def normalized_weights(weights: Optional[Sequence[float]], count: int) -> list[float]:
    """``weights`` divided by their sum (equal weights when None); one-line ConfigErrors for a wrong count, a negative
    weight or an all-zero list."""
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise ConfigError(f"config key 'teacher_weights': {len(weights)} weights for {count} teachers")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"config key 'teacher_weights': weights are >= 0 with a positive sum, got {list(weights)}")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


def check_teachers(teacher: Union[str, list[str], None], weights: Optional[list[float]], mode: str) -> None:
    """One-line ConfigErrors for ensemble settings that do not fit: an empty list, weights without a list of teachers,
    of another count, negative or all zero, or weights with ``teacher_mode=confident`` (which picks, not weighs)."""
    if isinstance(teacher, list) and not teacher:
        raise ConfigError("config key 'teacher': an empty list; name one teacher or several")
    if weights is None:
        return
    if mode != "mean":
        raise ConfigError("config key 'teacher_weights': weighs the teachers of teacher_mode=mean; "
                          f"teacher_mode={mode} picks the most confident teacher per sample")
    if teacher is not None and not isinstance(teacher, list):
        raise ConfigError("config key 'teacher_weights': needs a list of teachers (teacher=[a, b])")
    if isinstance(teacher, list) and len(weights) != len(teacher):
        raise ConfigError(f"config key 'teacher_weights': {len(weights)} weights for {len(teacher)} teachers")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"config key 'teacher_weights': weights are >= 0 with a positive sum, got {weights}")


def teacher_names(teacher: Union[str, list[str], None]) -> list[str]:
    """A config's ``teacher`` as a list: [] without a teacher, one, or an ensemble's members in order."""
    if teacher is None:
        return []
    return [teacher] if isinstance(teacher, str) else list(teacher)


def ensemble_logits(logits: Sequence[Tensor], weights: Sequence[float], mode: str) -> Tensor:
    """Combine the members' N×K logits (fp32): the weighted mean, or per sample the most confident member's."""
    stacked = torch.stack([z.float() for z in logits])  # M×N×K
    if mode == "mean":
        w = torch.tensor(list(weights), dtype=stacked.dtype, device=stacked.device).view(-1, 1, 1)
        return (w * stacked).sum(0)
    if mode == "confident":
        confidence = stacked.softmax(dim=-1).amax(dim=-1)  # M×N
        pick = confidence.argmax(dim=0)  # N: the first of equally confident members
        return stacked[pick, torch.arange(stacked.shape[1], device=stacked.device)]
    raise ConfigError(f"config key 'teacher_mode': expected one of {', '.join(MODES)}, got {mode!r}")


class EnsembleTeacher(nn.Module):
    """Frozen teachers ``t0``, ``t1``, ... whose combined logits are one teacher's (see the module docstring).

    ``views``: each member's own input (None: it takes the data as is), applied by :meth:`give_views`.
    ``labels``: how the members are named in logs and reports."""

    def __init__(self, members: Sequence[nn.Module], weights: Optional[Sequence[float]] = None, mode: str = "mean",
                 views: Sequence[Optional[InputView]] = (), labels: Sequence[str] = ()) -> None:
        super().__init__()
        if len(members) < 2:
            raise ConfigError("config key 'teacher': an ensemble needs at least two teachers")
        if mode not in MODES:
            raise ConfigError(f"config key 'teacher_mode': expected one of {', '.join(MODES)}, got {mode!r}")
        for i, member in enumerate(members):
            self.add_module(f"t{i}", member)
        self.mode = mode
        self.weights = normalized_weights(weights, len(members))
        self.views = list(views) or [None] * len(members)
        self.labels = list(labels) or [f"t{i}" for i in range(len(members))]

    def members(self) -> list[nn.Module]:
        return [self.get_submodule(f"t{i}") for i in range(len(self.weights))]

    def forward(self, images: Tensor) -> Tensor:
        return ensemble_logits([member(images) for member in self.members()], self.weights, self.mode)

    @property
    def stage_names(self) -> list[str]:
        raise ConfigError(_PER_TEACHER)

    @property
    def pre_logits_name(self) -> str:
        raise ConfigError(_PER_TEACHER)

    def describe(self) -> str:
        weights = "" if len(set(self.weights)) == 1 or self.mode != "mean" else \
            " weights " + "/".join(f"{w:.2f}" for w in self.weights)
        return f"ensemble ({self.mode}{weights}) of {', '.join(self.labels)}"

    def give_views(self, source: InputView, images: Tensor) -> list[str]:
        """Each member sees its own view of the data's batches (``source``); the lines saying what each does."""
        lines = [give_view(member, source, view, images, f"teacher {label}")
                 for member, view, label in zip(self.members(), self.views, self.labels)]
        return [line for line in lines if line]

    def folded(self, keep: set[str]) -> "EnsembleTeacher":
        """A copy with every member's BatchNorm folded (:func:`kdlab.engine.inference.fold_batchnorm`), member by
        member, so a member that does not trace does not keep the others from folding. ``keep``: the ensemble's
        module names a method reads (``t0.layer3``), left as they are."""
        members = []
        for i, member in enumerate(self.members()):
            prefix = f"t{i}."
            members.append(fold_batchnorm(member, keep={k[len(prefix):] for k in keep if k.startswith(prefix)}))
        return EnsembleTeacher(members, self.weights, self.mode, self.views, self.labels)


_PER_TEACHER = ("the teacher is an ensemble: name the teacher layers per teacher, e.g. "
                "method.teacher_layers=[t0.layer3] (its members are t0, t1, ...)")


def fold_teacher(teacher: nn.Module, keep: set[str]) -> nn.Module:
    """The frozen teacher as an inference module: BatchNorm folded, the module names in ``keep`` left as they are
    (member by member for an ensemble)."""
    if isinstance(teacher, EnsembleTeacher):
        return teacher.folded(keep)
    return fold_batchnorm(teacher, keep=keep)


def ensemble_identity(member_ids: Sequence[object], weights: Optional[Sequence[float]], mode: str) -> dict:
    """What an ensemble teacher is, for a run's identity and key: its members' identities (their weights' hashes),
    in order, the mode and the normalized weights (of ``mean``)."""
    return {"teachers": list(member_ids), "mode": mode,
            "weights": normalized_weights(weights, len(member_ids)) if mode == "mean" else None}
