"""The batch record: one small object per batch that travels loader -> trainer -> method.

A loader fills ``images``, ``labels`` and the samples' ``index`` in their split; the trainer adds ``teacher_logits``
when a cache holds the teacher's outputs for exactly these views; a method reads what it needs (CRD its memory-bank
rows by ``index``). ``extras`` is room for more without changing any signature on the way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from torch import Tensor


@dataclass
class Batch:
    images: Tensor  # float [B, C, H, W] on the training device, normalized
    labels: Tensor  # int64 [B]
    index: Optional[Tensor] = None  # int64 [B]: each sample's position in its split (None when unknown)
    teacher_logits: Optional[Tensor] = None  # fp32 [B, K]: the teacher's logits for these views, when given
    extras: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def replace(self, **changes: Any) -> "Batch":
        """A copy with some fields changed (the tensors are shared, not copied)."""
        return dataclasses.replace(self, **changes)
