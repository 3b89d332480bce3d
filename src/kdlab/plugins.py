"""Plug-ins: the user's own modules of models, datasets and methods, used without editing kdlab.

- Every config (run and experiment) takes ``imports: [my_models, my_pkg.losses]`` (the CLI: ``--import MODULE``):
  those modules are imported before any name is resolved, so their ``@register_model`` / ``@register_method`` /
  ``@register_dataset`` decorators take effect.
- Wherever a name goes, ``module:Name`` names an object of an importable module (``model=my_models:TinyNet``).
- A plug-in's source is part of its runs' identity: :func:`source_hashes` hashes each module's file, so editing the
  user's model or loss makes its runs train again instead of serving stale results.

The working directory is importable, as with ``python -m``: a script's folder is where its modules are.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

from kdlab.errors import ConfigError

# `torchvision:resnet18` names a library model and `hf:PATH` a Hugging Face dataset folder, not a module path
EXTERNAL_LIBRARIES = ("torchvision", "timm", "hf")


def is_object_path(name: str) -> bool:
    """True for ``module:Name`` (but not for the ``torchvision:``/``timm:`` model names or ``hf:PATH`` datasets)."""
    module, sep, attr = name.partition(":")
    return bool(sep and module and attr) and module not in EXTERNAL_LIBRARIES


def _working_dir_importable() -> None:
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)


def import_module(name: str) -> ModuleType:
    """Import a plug-in module, or raise a one-line ConfigError naming it."""
    if not name or not all(part.isidentifier() for part in name.split(".")):
        raise ConfigError(f"plug-in module {name!r} is not a module name (like my_models or my_pkg.losses)")
    _working_dir_importable()
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise ConfigError(f"cannot import plug-in module {name!r}: no such module (run kdlab from its folder "
                              f"or add that folder to PYTHONPATH)") from None
        raise ConfigError(f"plug-in module {name!r} failed to import: {_brief(exc)}") from None
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # the module raised (or called sys.exit) while importing: name it and its first line
        raise ConfigError(f"plug-in module {name!r} failed to import: {_brief(exc)}") from None


def import_modules(names: Iterable[str]) -> list[ModuleType]:
    """Import each plug-in module the user named (``--import`` / ``imports:``); see :func:`import_module`."""
    return [import_module(n) for n in names]


def check_trusted(modules: Iterable[str], allowed: Iterable[str], trust_code: bool, source: str) -> None:
    """Refuse, with one line naming the option to add, a module that a *file* names (a weights file's metadata, a
    manifest) unless the user named that same module for this command (``--import MODULE`` / ``imports:``) or passed
    ``trust_code=True`` (as Hugging Face's ``trust_remote_code``): loading a file never runs code by itself.

    ``source`` says which file named it (the error names it)."""
    if trust_code:
        return
    permitted = set(allowed)
    for module in modules:
        if module not in permitted:
            raise ConfigError(f"{source} names the plug-in module {module!r}, which kdlab imports (runs) only when "
                              f"you say so: add --import {module} (imports: [{module}]; the API: "
                              f"allowed_imports=[{module!r}] or trust_code=True) if you trust it")


def resolve_object(path: str, what: str) -> Any:
    """The object ``module:Name`` (``Name`` may be dotted: ``module:Outer.Inner``) names; an ``@suffix`` that tells
    two objects of one class apart (see :class:`kdlab.runs.live.Live`) is ignored."""
    module_name, _, attr = path.partition("@")[0].partition(":")
    obj: Any = import_module(module_name)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{what} {path!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def object_path(obj: Any) -> str:
    """``module:QualName`` of a class or function, the inverse of :func:`resolve_object`.

    An object defined in a script run as ``__main__`` is named after the script's file (``python train.py`` ->
    ``train:Student``), so ``--import train`` finds it again from another process.
    """
    target = obj if inspect.isclass(obj) or inspect.isfunction(obj) else type(obj)
    module = target.__module__
    if module == "__main__":
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        if main_file and Path(main_file).stem.isidentifier():
            module = Path(main_file).stem
    return f"{module}:{target.__qualname__}"


def module_names(names: Iterable[str]) -> list[str]:
    """The plug-in modules that ``names`` (object paths or registry names) need, in order, without repeats."""
    out = [n.partition(":")[0] for n in names if n and is_object_path(n)]
    return list(dict.fromkeys(m for m in out if m != "__main__"))


def source_hash(module: ModuleType) -> str:
    """sha256 (16 hex digits) of the module's source file; a module without a file hashes its name."""
    path = getattr(module, "__file__", None)
    digest = hashlib.sha256()
    if path and Path(path).is_file():
        digest.update(Path(path).read_bytes())
    else:
        digest.update(module.__name__.encode())
    return digest.hexdigest()[:16]


def source_hashes(names: Iterable[str]) -> dict[str, str]:
    """``{module: source hash}`` of the given plug-in modules (imported if they are not yet)."""
    return {m.__name__: source_hash(m) for m in import_modules(dict.fromkeys(names))}


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    where = ""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        where = f" ({Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno})"
    return f"{type(exc).__name__}: {text[0] if text else ''}{where}"
