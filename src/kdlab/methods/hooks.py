"""Reading intermediate features of any ``nn.Module`` by dotted module name, and matching their shapes.

    hooks = FeatureHooks(model, ["layer2", "layer3"])   # registered once
    with hooks.capture() as feats:                       # records only inside the block
        logits = model(images)
    feats["layer3"]                                      # that module's output in this forward pass

    with FeatureHooks(model, ["layer3"]) as hooks: ...   # or scoped: removed on exit

Outside ``capture()`` the hooks record nothing, so evaluating or saving the model is unaffected. Layer names come from
a method's params; when empty, the model's ``stage_names`` attribute (dotted names, shallow to deep) is used.

A name ending in ``:input`` records the module's (first positional) *input* instead of its output: ``"fc:input"`` is
the penultimate embedding a classifier reads. :func:`embedding_layers` defaults to the pooled feature before any
dropout: the module the model names in its ``pre_logits_name`` attribute (EfficientNet and MobileNetV3, whose
classifiers apply dropout: the input of their last Linear is dropout-masked in training while the teacher's, in eval,
is not), else ``"<classifier>:input"``, the classifier being the model's last ``nn.Linear`` (:func:`classifier_name`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.errors import ConfigError

INPUT_SUFFIX = ":input"


def split_layer(name: str) -> tuple[str, bool]:
    """``"fc:input"`` -> ``("fc", True)``; ``"body.2"`` -> ``("body.2", False)``."""
    if name.endswith(INPUT_SUFFIX):
        return name[: -len(INPUT_SUFFIX)], True
    return name, False


class FeatureHooks:
    """Forward hooks that record the outputs of named submodules while ``capture()`` is active."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.names = list(dict.fromkeys(names))  # unique, in order
        self._feats: dict[str, Tensor] | None = None
        self._handles = []
        for name in self.names:
            module_name, is_input = split_layer(name)
            recorder = _Recorder(self, name, is_input)
            self._handles.append(model.get_submodule(module_name).register_forward_hook(recorder))

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

    def __init__(self, hooks: FeatureHooks, name: str, is_input: bool = False) -> None:
        self.hooks, self.name, self.is_input = hooks, name, is_input

    def __call__(self, module: nn.Module, args: tuple, output: object) -> None:
        if self.is_input:
            if not args:
                raise TypeError(f"module {self.name!r} was called without a positional input; hook another layer")
            output = args[0]
        self.hooks.record(self.name, output)


def resolve_layers(model: nn.Module, names: Sequence[str], key: str) -> list[str]:
    """``names``, or the model's ``stage_names`` when empty; each checked to exist. ``key`` names the config key."""
    names = list(names) or list(getattr(model, "stage_names", ()) or ())
    if not names:
        raise ConfigError(f"{key}: {type(model).__name__} declares no stage_names; name its layers: {key}=[layer3]")
    for name in names:
        try:
            model.get_submodule(split_layer(name)[0])
        except AttributeError:
            raise ConfigError(f"{key}: {type(model).__name__} has no submodule {name!r}") from None
    return names


def classifier_name(model: nn.Module, key: str) -> str:
    """Dotted name of the model's classifier: its last ``nn.Linear`` (in registration order)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ConfigError(f"{key}: {type(model).__name__} has no nn.Linear classifier; name the embedding layer: "
                          f"{key}=[avgpool]")
    return names[-1]


def embedding_layers(model: nn.Module, names: Sequence[str], key: str) -> list[str]:
    """``names`` (checked), or the penultimate embedding before any dropout: ``[model.pre_logits_name]`` where the
    model declares it, else ``["<classifier>:input"]``."""
    if names:
        return resolve_layers(model, names, key)
    pre_logits = getattr(model, "pre_logits_name", None)
    if isinstance(pre_logits, str) and pre_logits:
        return resolve_layers(model, [pre_logits], key)
    return [classifier_name(model, key) + INPUT_SUFFIX]


def layer_pairs(student: nn.Module, teacher: nn.Module, student_names: Sequence[str], teacher_names: Sequence[str],
                default: str) -> tuple[list[str], list[str]]:
    """Student and teacher layers read in pairs, from a method's ``student_layers``/``teacher_layers`` params.

    ``default`` says what an empty list means: ``"stages"`` every stage (``stage_names``; two stage lists of
    different lengths are paired from the deep end), ``"last"`` the last stage, ``"embedding"`` the classifier's
    input. Lists given by the user on both sides must have equal lengths.
    """
    s_key, t_key = "method.student_layers", "method.teacher_layers"
    if default == "embedding":
        s, t = embedding_layers(student, student_names, s_key), embedding_layers(teacher, teacher_names, t_key)
    else:
        s, t = resolve_layers(student, student_names, s_key), resolve_layers(teacher, teacher_names, t_key)
        if default == "last":
            s, t = (s if student_names else s[-1:]), (t if teacher_names else t[-1:])
    if default == "stages" and not (student_names and teacher_names):
        return pair_deepest(s, t)
    if len(s) != len(t):
        raise ConfigError(f"config key '{t_key}' must pair with {s_key} ({len(t)} vs {len(s)} layers)")
    return s, t


def pair_deepest(student: Sequence[str], teacher: Sequence[str]) -> tuple[list[str], list[str]]:
    """Pair two stage lists by position from the deep end (a 3-stage student meets a 4-stage teacher's last 3)."""
    n = min(len(student), len(teacher))
    return list(student[len(student) - n:]), list(teacher[len(teacher) - n:])


def check_map(name: str, feature: Tensor) -> None:
    """Feature methods need N×C×H×W maps."""
    if feature.dim() != 4:
        raise ConfigError(f"layer {name!r} outputs shape {tuple(feature.shape)}; this method needs N×C×H×W maps "
                          f"(between a transformer's tokens and a CNN's maps use method=ofa, or a logits method)")


def as_map(feature: Tensor) -> Tensor:
    """An N×C embedding as an N×C×1×1 map; maps pass unchanged."""
    return feature[:, :, None, None] if feature.dim() == 2 else feature


def match_spatial(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the larger of two N×C×H×W maps down to the other's height and width (each dimension separately)."""
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    if tuple(a.shape[-2:]) != size:
        a = F.adaptive_avg_pool2d(a, size)
    if tuple(b.shape[-2:]) != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b
