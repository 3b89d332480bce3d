"""A plain loss function as a method: the quickest way to try one's own distillation loss.

    def my_kl(student_logits, teacher_logits, labels):          # in my_losses.py, or a notebook cell
        return F.kl_div(student_logits.log_softmax(1), teacher_logits.softmax(1), reduction="batchmean")

    kdlab.distill(student=..., teacher=..., method=my_kl)        # or method=my_losses:my_kl on the command line

    L = ce_weight · CE(y, p_s) + weight · fn(z_s, z_t, y)

The function gets the student's logits (fp32, with gradients), the teacher's logits (fp32, no gradients; precomputed
ones when a cache has them) and the labels, and returns a scalar tensor or a dict of them (each logged as
``loss_<key>``). For losses on features, subclass :class:`kdlab.methods.Method` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

from torch import Tensor

from kdlab.errors import ConfigError
from kdlab.methods.base import BaseParams, Context, Method


@dataclass
class FunctionParams(BaseParams):
    weight: float = 1.0  # weight of the function's loss
    ce_weight: float = 1.0  # weight of the hard cross-entropy on the labels


class FunctionMethod(Method):
    Params = FunctionParams
    params: FunctionParams
    fn: ClassVar[Callable[..., Tensor | dict]]

    def reads_teacher_logits(self) -> bool:
        return True

    def ce_weight(self) -> float:
        return self.params.ce_weight

    def losses(self, ctx: Context) -> dict[str, Tensor]:
        out = type(self).fn(ctx.logits.float(), ctx.teacher_logits, ctx.labels)
        name = getattr(type(self).fn, "__name__", "fn")
        parts = out if isinstance(out, dict) else {name: out}
        for key, value in parts.items():
            if not isinstance(value, Tensor) or value.dim() != 0:
                raise ConfigError(f"loss function {name!r} must return a scalar tensor (or a dict of them); "
                                  f"{key!r} is {type(value).__name__}")
        return {f"loss_{key}": self.params.weight * value.float() for key, value in parts.items()}


def function_method(fn: Callable) -> type[Method]:
    """A Method class whose loss is ``fn(student_logits, teacher_logits, labels)``."""
    return type(f"FunctionMethod[{getattr(fn, '__name__', 'fn')}]", (FunctionMethod,), {"fn": staticmethod(fn)})
