"""The experiment's ETA: seconds left, from the seconds per epoch measured so far, including the teacher's work.

A run of a kind already measured (same role, model, method and teacher) takes what that kind took. Otherwise its
epoch is estimated from its parts: the student's own training (its baseline's epoch, when measured) plus, for a run
that distils from a teacher, the teacher's forward passes, a third of the teacher's training epoch (a forward pass
is about a third of a training step's work). Only when nothing of the kind's parts is measured does the mean over
measured runs of the same role, then over all runs, stand in.
"""

from __future__ import annotations

from typing import Any

TEACHER_FORWARD_SHARE = 1 / 3  # forward / (forward + backward + update) of a training step, roughly

SpeedKey = tuple[str, str, str, Any]  # (role, model label, method label, teacher label)


def speed_key(spec) -> SpeedKey:
    """What a run's speed depends on: its role and model, its method (the teacher's work, adapters, heads) and
    teacher."""
    return (spec.role, spec.student, spec.method, spec.teacher)


class Eta:
    def __init__(self) -> None:
        self.epoch_seconds: dict[SpeedKey, float] = {}

    def record(self, spec, seconds_per_epoch: float) -> None:
        self.epoch_seconds[speed_key(spec)] = seconds_per_epoch

    def epoch(self, spec) -> float:
        """Estimated seconds of one epoch of ``spec`` (0 when nothing is measured yet)."""
        key = speed_key(spec)
        if key in self.epoch_seconds:
            return self.epoch_seconds[key]
        own = self.epoch_seconds.get(("baseline", spec.student, "ce", None))
        teacher = self._teacher_epoch(spec.teacher)
        if own is not None and (spec.teacher is None or teacher is not None):
            return own + (teacher * TEACHER_FORWARD_SHARE if teacher is not None else 0.0)
        for same in ([v for k, v in self.epoch_seconds.items() if k[0] == spec.role],
                     list(self.epoch_seconds.values())):
            if same:
                return sum(same) / len(same)
        return 0.0

    def _teacher_epoch(self, label: str | None) -> float | None:
        """A teacher's (or assistant's) measured training epoch."""
        if label is None:
            return None
        found = [v for k, v in self.epoch_seconds.items() if k[0] in ("teacher", "assistant") and k[1] == label]
        return found[0] if found else None

    def left(self, remaining: list, epochs_done) -> float:
        """Seconds left for ``remaining`` runs (``epochs_done(spec)``: epochs a run has already finished)."""
        if not self.epoch_seconds:
            return 0.0
        return sum(self.epoch(s) * (s.cfg.epochs - epochs_done(s)) for s in remaining)
