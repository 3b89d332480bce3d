"""Code identity: a short hash of the code that defines a class or function, for run identity.

- An object whose module is a real file (a plug-in module, a library): the hash of that file's source, so editing the
  module makes its runs train again.
- An object defined in a notebook or in a ``__main__`` script: its own source, plus, recursively, the source of the
  functions and classes it reaches by global name that are defined there too (a helper a notebook model calls, the
  block class it builds), plus the ``repr`` of the simple-valued globals it reads (``WIDTH = 64``). Editing a cell
  that defines an unrelated function does not change it; editing the helper does.

Where no source is available (code ``exec``-ed from a string), the compiled code stands in for it (bytecode,
constants and names, nested code included).
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from pathlib import Path
from types import CodeType, ModuleType
from typing import Any, Iterator, Optional

_SIMPLE = (int, float, str, bool, bytes, type(None))


def code_identity(obj: Any) -> str:
    """sha256 (16 hex digits) of the code behind ``obj`` (a module, a class, a function, or an instance: its class).

    See the module docstring for what is covered for file modules and for notebook / ``__main__`` code.
    """
    if inspect.ismodule(obj):
        return hashlib.sha256(_file_source(obj)).hexdigest()[:16]
    target = obj if inspect.isclass(obj) or inspect.isroutine(obj) else type(obj)
    target = inspect.unwrap(target) if inspect.isroutine(target) else target
    module = sys.modules.get(getattr(target, "__module__", "") or "")
    digest = hashlib.sha256()
    if module is not None and not is_local_module(module):
        digest.update(_file_source(module))
        return digest.hexdigest()[:16]
    seen: set[int] = set()
    for part in _closure(target, getattr(target, "__module__", None), seen):
        digest.update(part)
    return digest.hexdigest()[:16]


def is_local_module(module: ModuleType) -> bool:
    """True for ``__main__`` (a script or a notebook kernel) and for modules without a source file of their own."""
    if module.__name__ == "__main__":
        return True
    if module.__name__ in sys.builtin_module_names:
        return False
    path = getattr(module, "__file__", None)
    return not (path and Path(path).is_file())


def _file_source(module: ModuleType) -> bytes:
    path = getattr(module, "__file__", None)
    if path and Path(path).is_file() and path.endswith(".py"):
        return Path(path).read_bytes()
    return f"module:{module.__name__}:{getattr(module, '__version__', '')}".encode()  # compiled / built-in


def _is_local(obj: Any, module_name: Optional[str]) -> bool:
    """A class or function defined in the same notebook / ``__main__`` module as the object being identified."""
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return False
    return module_name is not None and getattr(obj, "__module__", None) == module_name


def _closure(obj: Any, module_name: Optional[str], seen: set[int]) -> Iterator[bytes]:
    """The code of ``obj`` and of every local class/function it reaches by global name, each once, in a fixed order;
    simple-valued globals it reads as ``name=repr``."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    yield f"<{getattr(obj, '__qualname__', type(obj).__name__)}>".encode()
    yield _own_source(obj)
    namespace = _namespace(obj, module_name)
    for name in sorted(_global_names(obj)):
        if name not in namespace:
            continue
        value = namespace[name]
        if _is_local(value, module_name):
            yield from _closure(value, module_name, seen)
        elif _is_simple(value):
            yield f"{name}={value!r};".encode()
    if inspect.isclass(obj):  # its local bases, and local classes/functions kept as class attributes
        members = [*obj.__mro__[1:], *(v for _, v in sorted(vars(obj).items()) if not inspect.isfunction(v))]
        for member in members:
            if _is_local(member, module_name):
                yield from _closure(member, module_name, seen)


def _namespace(obj: Any, module_name: Optional[str]) -> dict[str, Any]:
    """The globals ``obj``'s code reads: a function's own, else those of one of a class's methods, else the module's."""
    if inspect.isfunction(obj):
        return obj.__globals__
    for member in vars(obj).values() if inspect.isclass(obj) else ():
        for func in _functions_of(member):
            return getattr(inspect.unwrap(func), "__globals__", {})
    module = sys.modules.get(module_name or "")
    return vars(module) if module is not None else {}


def _own_source(obj: Any) -> bytes:
    """The source text of ``obj``, or its compiled code where the source cannot be found."""
    try:
        return inspect.getsource(obj).encode()
    except (OSError, TypeError):
        pass
    parts = []
    for code in _codes(obj):
        parts.append(_code_bytes(code))
    if inspect.isclass(obj):  # class-level constants are not in any code object once the class exists
        for key, value in sorted(vars(obj).items()):
            if _is_simple(value) and not key.startswith("__"):
                parts.append(f"{key}={value!r};".encode())
    return b"".join(parts)


def _codes(obj: Any) -> Iterator[CodeType]:
    """The code objects of a function, or of every method (plain, static, class, property) of a class."""
    if inspect.isclass(obj):
        for _, member in sorted(vars(obj).items()):
            for func in _functions_of(member):
                code = getattr(inspect.unwrap(func), "__code__", None)
                if code is not None:
                    yield code
    else:
        code = getattr(obj, "__code__", None)
        if code is not None:
            yield code


def _functions_of(member: Any) -> list[Any]:
    if isinstance(member, (staticmethod, classmethod)):
        return [member.__func__]
    if isinstance(member, property):
        return [f for f in (member.fget, member.fset, member.fdel) if f is not None]
    return [member] if inspect.isfunction(member) else []


def _code_bytes(code: CodeType) -> bytes:
    consts = [(_code_bytes(c) if isinstance(c, CodeType) else repr(c).encode()) for c in code.co_consts]
    return code.co_code + b"|".join(consts) + repr(code.co_names).encode()


def _global_names(obj: Any) -> set[str]:
    """Names ``obj``'s code reads as globals (attribute names too: harmless, they are looked up and skipped)."""
    names: set[str] = set()
    for code in _codes(obj):
        stack = [code]
        while stack:
            current = stack.pop()
            names.update(current.co_names)
            stack.extend(c for c in current.co_consts if isinstance(c, CodeType))
    return names


def _is_simple(value: Any) -> bool:
    if isinstance(value, _SIMPLE):
        return True
    return isinstance(value, (tuple, list)) and len(value) <= 256 and all(isinstance(v, _SIMPLE) for v in value)
