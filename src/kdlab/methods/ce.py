"""``ce``: plain cross-entropy on the labels — the baseline student, and how a teacher is trained.

    L = CE(y, softmax(z_s))          (optionally with label smoothing)
"""

from __future__ import annotations

from kdlab.methods.base import Method
from kdlab.methods.registry import METHODS


@METHODS.register("ce")
class CE(Method):
    needs_teacher = False  # the base class's forward: one student pass, the hard cross-entropy, nothing else
