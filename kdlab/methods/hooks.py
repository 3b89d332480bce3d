"""Reading intermediate features of any ``nn.Module`` by dotted module name, and matching their shapes.

    hooks = FeatureHooks(model, ["layer2", "layer3"])   # registered once
    with hooks.capture() as feats:                       # records only inside the block
        logits = model(images)
    feats["layer3"]                                      # that module's output in this forward pass

    with FeatureHooks(model, ["layer3"]) as hooks: ...   # or scoped: removed on exit

Outside ``capture()`` the hooks record nothing, so evaluating or saving the model is unaffected. Layer names come from
a method's params; when empty, the model's ``stage_names`` attribute (dotted names, shallow to deep) is used.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.errors import ConfigError


class FeatureHooks:
    """Forward hooks that record the outputs of named submodules while ``capture()`` is active."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.names = list(dict.fromkeys(names))  # unique, in order
        self._feats: dict[str, Tensor] | None = None
        self._handles = [model.get_submodule(n).register_forward_hook(_Recorder(self, n)) for n in self.names]

    def record(self, name: str, output: object) -> None:
        if self._feats is None:
            return
        if not isinstance(output, Tensor):
            raise TypeError(f"module {name!r} returns {type(output).__name__}, not a Tensor; hook another layer")
        self._feats[name] = output  # a module called twice in one pass keeps its last output

    @contextmanager
    def capture(self) -> Iterator[dict[str, Tensor]]:
        """Record the named outputs of the forward passes run inside the block into the yielded dict."""
        feats: dict[str, Tensor] = {}
        self._feats = feats
        try:
            yield feats
        finally:
            self._feats = None
        missing = [n for n in self.names if n not in feats]
        if missing:
            raise RuntimeError(f"modules {missing} were not called during the forward pass")

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "FeatureHooks":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class _Recorder:
    """The hook: an object, not a closure, so a hooked model can be pickled, and a deep copy of it records into its own
    copy of the FeatureHooks, never into the original's."""

    def __init__(self, hooks: FeatureHooks, name: str) -> None:
        self.hooks, self.name = hooks, name

    def __call__(self, module: nn.Module, args: object, output: object) -> None:
        self.hooks.record(self.name, output)


def resolve_layers(model: nn.Module, names: Sequence[str], key: str) -> list[str]:
    """``names``, or the model's ``stage_names`` when empty; each checked to exist. ``key`` names the config key."""
    names = list(names) or list(getattr(model, "stage_names", ()) or ())
    if not names:
        raise ConfigError(f"{key}: {type(model).__name__} declares no stage_names; name its layers: {key}=[layer3]")
    for name in names:
        try:
            model.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"{key}: {type(model).__name__} has no submodule {name!r}") from None
    return names


def pair_deepest(student: Sequence[str], teacher: Sequence[str]) -> tuple[list[str], list[str]]:
    """Pair two stage lists by position from the deep end (a 3-stage student meets a 4-stage teacher's last 3)."""
    n = min(len(student), len(teacher))
    return list(student[len(student) - n:]), list(teacher[len(teacher) - n:])


def check_map(name: str, feature: Tensor) -> None:
    """Feature methods need N×C×H×W maps."""
    if feature.dim() != 4:
        raise ConfigError(f"layer {name!r} outputs shape {tuple(feature.shape)}; this method needs N×C×H×W maps")


def match_spatial(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the larger of two N×C×H×W maps down to the other's height and width (each dimension separately)."""
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    if tuple(a.shape[-2:]) != size:
        a = F.adaptive_avg_pool2d(a, size)
    if tuple(b.shape[-2:]) != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b
