"""The model registry: ``create_model(name, num_classes=, in_channels=)``, ``list_models(pattern)``, stage names.

Models know nothing of training or distillation: a model is a plain ``nn.Module`` whose ``forward`` returns logits.
kdlab's own models set ``model.stage_names``: the dotted module names of their stages, shallow to deep, so that
feature-based methods can hook them (``model.get_submodule(name)``); a user's model need not (feature methods then take
layer names from ``method.student_layers`` / ``method.teacher_layers``). A model whose classifier applies dropout may
also set ``model.pre_logits_name``: the module whose output is the pooled feature before that dropout.
``torchvision:NAME`` and ``timm:NAME`` build models from those libraries when they are importable (see
``kdlab.models.external``, which registers its builder in :data:`EXTERNAL` under each library's name); ``module:Name``
builds a plug-in's class or factory.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from torch import nn

from kdlab.config import coerce
from kdlab.errors import ConfigError
from kdlab.registry import Registry

MODELS: Registry = Registry("model")
EXTERNAL_PREFIXES = ("torchvision:", "timm:")
# library name -> builder of ``LIBRARY:ARCH`` models: ``build(name, num_classes=, in_channels=, **kwargs)``
EXTERNAL: Registry[Callable[..., nn.Module]] = Registry("model library")


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build a registered model (or ``torchvision:NAME`` / ``timm:NAME`` / ``module:Name``), freshly initialized.

    ``num_classes`` and ``in_channels`` are passed when the factory takes them (a plug-in class may take neither);
    other keyword arguments must be the factory's own.
    """
    if name.startswith(EXTERNAL_PREFIXES):
        build = EXTERNAL.get(name.partition(":")[0])
        return build(name, num_classes=num_classes, in_channels=in_channels, **kwargs)
    factory = MODELS.get(name)
    if not callable(factory):
        raise ConfigError(f"model {name!r} is not a class or function")
    accepted: Mapping[str, inspect.Parameter]
    try:
        accepted = inspect.signature(factory).parameters
        open_kwargs = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    except (TypeError, ValueError):  # a builtin or C callable: pass everything
        accepted, open_kwargs = {}, True
    if not open_kwargs:
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            allowed = ", ".join(k for k in accepted if k not in ("num_classes", "in_channels")) or "(none)"
            raise ConfigError(f"model {name!r} has no option {unknown[0]!r}; its options: {allowed}")
    data_args = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels))
                 if open_kwargs or k in accepted}
    model = factory(**data_args, **kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {name!r} built a {type(model).__name__}, not a torch.nn.Module")
    return model


def canonical_kwargs(name: str, kwargs: dict) -> dict:
    """A registered model's keyword arguments as its run's identity should see them: values converted to the factory's
    annotated number types (``width=1e2`` from YAML 1.1 is a string) and those equal to the default dropped, so that
    writing a default explicitly is the same config. Other models' arguments are returned as they are."""
    if not kwargs or name.startswith(EXTERNAL_PREFIXES) or name not in MODELS:
        return dict(kwargs)
    try:
        params = inspect.signature(MODELS.get(name), eval_str=True).parameters
    except (TypeError, ValueError, NameError):
        return dict(kwargs)
    out = {}
    for key, value in kwargs.items():
        param = params.get(key)
        if param is not None and param.annotation in (int, float, bool, str):
            value = coerce(param.annotation, value, f"model.{key}")
        if param is None or param.default is param.empty or param.default != value \
                or type(param.default) is not type(value):
            out[key] = value
    return out


def list_models(pattern: str = "*") -> list[str]:
    return MODELS.list(pattern)


def stage_names(model: nn.Module) -> list[str]:
    """The model's stage module names, shallow to deep (``[]`` for a plain module that declares none)."""
    return list(getattr(model, "stage_names", ()) or ())
