"""What the engine asks of a method: the interface of :class:`kdlab.methods.base.Method`, as a Protocol.

The engine imports no method; it trains any ``nn.Module`` that offers these (a method registered by a plug-in
included). Typing the trainer's method by it lets mypy check the calls, which ``nn.Module``'s dynamic attributes
(typed ``Tensor | Module``) would not.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Protocol

from torch import Tensor, nn


class TrainableMethod(Protocol):
    """A method module: ``forward(batch)`` returns ``{"logits": ..., "loss_<part>": ...}``; the rest below."""

    teacher: Optional[nn.Module]

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def to(self, *args: Any, **kwargs: Any) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def students(self) -> dict[str, nn.Module]:
        """The trained students by name (``student`` first): each is evaluated and saved."""
        ...

    def extra_modules(self) -> list[nn.Module]:
        """Trained modules that are not students (adapters, heads)."""
        ...

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer updates."""
        ...

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Everything a checkpoint must hold to resume the method exactly (weights, banks, buffers)."""
        ...

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load what :meth:`trainable_state_dict` gave."""
        ...

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Called before each epoch (0-based) of ``epochs`` (warm-ups, schedules of loss weights)."""
        ...
