"""The experiment's ETA: seconds left, from the seconds per epoch measured so far, including the teacher's work.

A run of a kind already measured (same role, model, method and teacher) takes what that kind took; a run's one-off
work (building the experiment's bank of teacher views) is not part of its kind's speed. Otherwise a student's epoch
is estimated from its parts: its baseline's measured epoch plus, when it runs the teacher itself (it reads teacher
features, or the teacher's outputs are not shared), the teacher's forward passes, a third of the teacher's training
epoch (a forward pass is about a third of a training step's work). A run whose parts are not measured yet makes the
ETA unknown (None) rather than a guess from another kind of run: the teacher's epoch applied to a student, or the
baseline's to a KD run, was off by 3x in both directions.
"""

from __future__ import annotations

from typing import Any, Optional

from kdlab.errors import KdlabError
from kdlab.methods.base import Method
from kdlab.methods.factory import method_class

TEACHER_FORWARD_SHARE = 1 / 3  # forward / (forward + backward + update) of a training step, roughly

SpeedKey = tuple[str, str, str, Any]  # (role, model label, method label, teacher label)


def speed_key(spec) -> SpeedKey:
    """What a run's speed depends on: its role and model, its method (the teacher's work, adapters, heads) and
    teacher."""
    return (spec.role, spec.student, spec.method, spec.teacher)


def reads_logits_only(method_name: str) -> bool:
    """Whether a method, by its class, needs the teacher's logits and no teacher features (so shared or banked
    teacher outputs serve it). Unknown and composite methods count as running the teacher."""
    try:
        cls = method_class(method_name)
    except KdlabError:  # not resolvable here (e.g. a plug-in's name): assume the costlier case
        return False
    return (cls.teacher_layers is Method.teacher_layers
            and cls.reads_teacher_logits is not Method.reads_teacher_logits)


class Eta:
    def __init__(self, shared_teacher_outputs: bool = True) -> None:
        self.epoch_seconds: dict[SpeedKey, float] = {}
        self.shared = shared_teacher_outputs

    def record(self, spec, seconds_per_epoch: float) -> None:
        self.epoch_seconds[speed_key(spec)] = seconds_per_epoch

    def epoch(self, spec) -> Optional[float]:
        """Estimated seconds of one epoch of ``spec``; None when its parts are not measured yet."""
        key = speed_key(spec)
        if key in self.epoch_seconds:
            return self.epoch_seconds[key]
        own = self.epoch_seconds.get(("baseline", spec.student, "ce", None))
        if own is None or spec.role in ("teacher", "assistant"):
            return None
        if spec.teacher is None:
            return own
        teacher = self._teacher_epoch(spec.teacher)
        if teacher is None:
            return None
        live = not (self.shared and reads_logits_only(spec.config.method.name))
        return own + (teacher * TEACHER_FORWARD_SHARE if live else 0.0)

    def _teacher_epoch(self, label: str | None) -> float | None:
        """A teacher's (or assistant's) measured training epoch."""
        found = [v for k, v in self.epoch_seconds.items() if k[0] in ("teacher", "assistant") and k[1] == label]
        return found[0] if found else None

    def left(self, remaining: list, epochs_done) -> Optional[float]:
        """Seconds left for ``remaining`` runs (``epochs_done(spec)``: epochs a run has already finished); None
        when some run's speed can't be estimated yet."""
        total = 0.0
        for spec in remaining:
            seconds = self.epoch(spec)
            if seconds is None:
                return None
            total += seconds * (spec.config.epochs - epochs_done(spec))
        return total
