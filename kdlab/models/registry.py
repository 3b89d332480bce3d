"""The model registry: ``create_model(name, num_classes=, in_channels=)``, ``list_models(pattern)``, stage names.

Models know nothing of training or distillation: a model is a plain ``nn.Module`` whose ``forward`` returns logits.
Each registered model sets ``model.stage_names``: the dotted module names of its stages, shallow to deep, so that
feature-based methods can hook them (``model.get_submodule(name)``). ``torchvision:NAME`` and ``timm:NAME`` build
models from those libraries when they are importable (see ``kdlab.models.external``).
"""

from __future__ import annotations

import inspect

from torch import nn

from kdlab.errors import ConfigError
from kdlab.registry import Registry

MODELS: Registry = Registry("model")
EXTERNAL_PREFIXES = ("torchvision:", "timm:")


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build a registered model (or ``torchvision:NAME`` / ``timm:NAME``) with a fresh initialization."""
    if name.startswith(EXTERNAL_PREFIXES):
        from kdlab.models.external import create_external_model

        return create_external_model(name, num_classes=num_classes, in_channels=in_channels, **kwargs)
    factory = MODELS.get(name)
    accepted = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            allowed = ", ".join(k for k in accepted if k not in ("num_classes", "in_channels")) or "(none)"
            raise ConfigError(f"model {name!r} has no option {unknown[0]!r}; its options: {allowed}")
    model = factory(num_classes=num_classes, in_channels=in_channels, **kwargs)
    if not getattr(model, "stage_names", None):
        raise TypeError(f"model {name!r} does not set stage_names")
    return model


def list_models(pattern: str = "*") -> list[str]:
    return MODELS.list(pattern)


def stage_names(model: nn.Module) -> list[str]:
    """The model's stage module names, shallow to deep (``[]`` for a plain module that declares none)."""
    return list(getattr(model, "stage_names", ()) or ())
