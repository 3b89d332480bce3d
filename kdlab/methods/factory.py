"""Building a method from its config: ``build_method(name, params, student, teacher)``, ``a+b`` names included.

    build_method("kd", {"T": 4}, student, teacher)
    build_method("kd+fitnets", {"kd": {"alpha": 0.9}, "fitnets.weight": 0.5}, student, teacher)

Hyperparameters are validated against the method's ``Params`` dataclass with the project's config rules, so an unknown
or mistyped key raises the standard one-line ConfigError naming ``method.<key>`` (``method.<part>.<key>`` in a
composite). ``parse_method_params`` does that validation alone (the CLI checks configs before training).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from kdlab.config import from_dict
from kdlab.errors import ConfigError
from kdlab.methods.base import BaseParams, Method
from kdlab.methods.compose import Composite, composite_params_cls
from kdlab.methods.registry import METHODS


def _part_names(name: str) -> list[str]:
    parts = [p.strip() for p in name.split("+")]
    if not all(parts):
        raise ConfigError(f"malformed method name {name!r}; combine methods as a+b")
    if len(set(parts)) != len(parts):
        raise ConfigError(f"method {name!r} names a part twice")
    return parts


def method_params_cls(name: str) -> type[BaseParams]:
    """The Params dataclass of method ``name`` (for ``a+b``: one section per part, each with a ``weight``)."""
    parts = _part_names(name)
    if len(parts) == 1:
        return METHODS.get(parts[0]).Params
    return composite_params_cls({p: METHODS.get(p) for p in parts})


def _nest(params: dict[str, Any]) -> dict[str, Any]:
    """``{"kd.T": 4}`` -> ``{"kd": {"T": 4}}`` (dotted keys as written in a YAML mapping), merged with nested ones."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        node, *path = str(key).split(".")
        if not path:
            out[node] = {**out[node], **value} if isinstance(out.get(node), dict) and isinstance(value, dict) else value
            continue
        section = out.setdefault(node, {})
        if not isinstance(section, dict):
            raise ConfigError(f"config key 'method.{node}' is both a value and a section")
        section.update(_nest({".".join(path): value}))
    return out


def parse_method_params(name: str, params: dict[str, Any] | None = None) -> BaseParams:
    """Validate ``params`` for method ``name`` into its Params dataclass (ConfigError naming ``method.<key>``)."""
    return from_dict(method_params_cls(name), _nest(dict(params or {})), prefix="method.")


def build_method(name: str, params: dict[str, Any] | None, student: nn.Module,
                 teacher: nn.Module | None = None) -> Method:
    """The method ``name`` (``a`` or ``a+b+...``) over ``student`` and the frozen ``teacher``, with validated params.

    Feature-based methods create their adapters in ``method.prepare(images, ...)``, which the runner calls once
    before building the optimizer.
    """
    parsed = parse_method_params(name, params)
    cls = Composite if "+" in name else METHODS.get(name)
    return cls(student, teacher, parsed)
