"""One small generic registry for models, datasets and methods.

    MODELS = Registry("model")

    @MODELS.register("resnet20")
    def resnet20(num_classes=10, in_channels=3): ...

    MODELS.build("resnet20", num_classes=100)
    MODELS.list("resnet*")
    MODELS.get("my_models:TinyNet")     # an object of a plug-in module, by path (see kdlab.plugins)
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, Generic, Iterator, TypeVar

from kdlab.errors import ConfigError
from kdlab.plugins import is_object_path, resolve_object

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table. Unknown names raise a ConfigError that lists the valid ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator registering a class or function under ``name`` (default: its ``__name__``)."""

        def decorator(obj: T) -> T:
            key = name or getattr(obj, "__name__", None)
            if not isinstance(key, str) or not key:
                raise TypeError(f"{self.kind} {obj!r} has no __name__: give the name to register it under")
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._entries and is_object_path(name):
            return resolve_object(name, self.kind)
        if name not in self._entries:
            valid = ", ".join(sorted(self._entries)) or "(none)"
            raise ConfigError(f"unknown {self.kind} {name!r}; valid {self.kind}s: {valid} "
                              f"(or module:Name of a plug-in)")
        return self._entries[name]

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)  # type: ignore[operator]

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style wildcard pattern, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
