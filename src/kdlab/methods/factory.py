"""Building a method from its config: ``build_method(name, params, student, teacher)``, ``a+b`` names included.

    build_method("kd", {"T": 4}, student, teacher)
    build_method("kd+fitnets", {"kd": {"alpha": 0.9}, "fitnets.weight": 0.5}, student, teacher)

Hyperparameters are validated against the method's ``Params`` dataclass with the project's config rules, so an unknown
or mistyped key raises the standard one-line ConfigError naming ``method.<key>`` (``method.<part>.<key>`` in a
composite). ``parse_method_params`` does that validation alone (the CLI checks configs before training).
"""

from __future__ import annotations

from typing import Any, Callable, Union

from torch import nn

from kdlab.config import from_dict
from kdlab.errors import ConfigError
from kdlab.methods.base import BaseParams, Method
from kdlab.methods.compose import Composite, composite_params_cls
from kdlab.methods.function import function_method
from kdlab.methods.registry import METHODS


def _part_names(name: str) -> list[str]:
    parts = [p.strip() for p in name.split("+")]
    if not all(parts):
        raise ConfigError(f"malformed method name {name!r}; combine methods as a+b")
    if len(set(parts)) != len(parts):
        raise ConfigError(f"method {name!r} names a part twice")
    return parts


MethodLike = Union[str, type, Callable]


def method_class(method: MethodLike) -> type[Method]:
    """A Method class from a registered name, a ``module:Name`` path, a Method subclass or a loss function."""
    obj = METHODS.get(method) if isinstance(method, str) else method
    if isinstance(obj, type) and issubclass(obj, Method):
        return obj
    if callable(obj) and not isinstance(obj, type):
        return function_method(obj)
    raise ConfigError(f"method {method!r} is neither a kdlab Method class nor a loss function")


def method_params_cls(method: MethodLike) -> type[BaseParams]:
    """The Params dataclass of a method (for ``a+b``: one section per part, each with a ``weight``)."""
    if not isinstance(method, str):
        return method_class(method).Params
    parts = _part_names(method)
    if len(parts) == 1:
        return method_class(parts[0]).Params
    return composite_params_cls({p: method_class(p) for p in parts})


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


def parse_method_params(method: MethodLike, params: dict[str, Any] | None = None) -> BaseParams:
    """Validate ``params`` for a method into its Params dataclass (ConfigError naming ``method.<key>``)."""
    return from_dict(method_params_cls(method), _nest(dict(params or {})), prefix="method.")


def build_method(method: MethodLike, params: dict[str, Any] | None, student: nn.Module,
                 teacher: nn.Module | None = None) -> Method:
    """The method (a name, ``a+b+...``, ``module:Name``, a Method class or a loss function) over ``student`` and the
    frozen ``teacher``, with validated params.

    Feature-based methods create their adapters in ``method.prepare(images, ...)``, which the runner calls once
    before building the optimizer.
    """
    parsed = parse_method_params(method, params)
    cls = Composite if isinstance(method, str) and "+" in method else method_class(method)
    return cls(student, teacher, parsed)
