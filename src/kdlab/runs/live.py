"""Python objects that stand in for names of a config: the API's models, teachers, data and methods.

A config names everything by a string, so that it can be saved beside the run and read back by another process. An
object given through the Python API is named by its ``module:QualName`` path (:func:`kdlab.plugins.object_path`) and
kept here under that name, so the run uses the object itself (never re-importing a script to find it), while its
config still says what it was. What such an object contributes to the run's identity: its source (the file of its
module, or its own source in a notebook) and, for a model, the hash of its initial weights.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from kdlab.codeid import code_identity
from kdlab.plugins import module_names, object_path, source_hashes


@dataclass
class Live:
    """In-process objects by config name. ``models`` hold factories (called once per run: the API passes the user's
    instance itself, an experiment a fresh copy of it per run)."""

    models: dict[str, Callable[[], nn.Module]] = field(default_factory=dict)
    teachers: dict[str, nn.Module] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)  # name -> Dataset/DataLoader objects (see kdlab.data.custom)
    methods: dict[str, Any] = field(default_factory=dict)  # name -> Method class or loss function
    hashes: dict[str, str] = field(default_factory=dict)  # name -> identity hash of the object
    # plug-in modules the caller vouches for beyond a run's own imports: an experiment's file names the models of
    # its teacher runs (``module:Name``), so a student run may import them when it loads its teacher's checkpoint
    trusted: list[str] = field(default_factory=list)
    _objects: dict[str, Any] = field(default_factory=dict, repr=False)  # name -> the object it was given for

    def add(self, kind: str, obj: Any, name: Optional[str] = None, factory: Optional[Callable] = None) -> str:
        """Keep ``obj`` under ``name`` (default: its object path); returns the name to write in the config.

        Two different objects of one class (a teacher and a student ``nn.Sequential``) get distinct names: the second
        is suffixed ``@<its hash>`` (the suffix is ignored when a name is resolved as a path).
        """
        name = name or object_path(obj)
        if name in self._objects and self._objects[name] is not obj:
            name = f"{name}@{object_hash(obj, state_hash(obj) if isinstance(obj, nn.Module) else '')[:8]}"
        self._objects[name] = obj
        if kind == "models":
            self.models[name] = factory or ModuleFactory(obj)
            self.hashes[name] = object_hash(obj, state_hash(obj))
        elif kind == "teachers":
            self.teachers[name] = obj
            self.hashes[name] = object_hash(obj, state_hash(obj))
        else:
            getattr(self, kind)[name] = obj
            self.hashes[name] = object_hash(obj)
        return name


@dataclass(frozen=True, eq=False)
class ModuleFactory:
    """A model factory that pickles (for worker processes): the given module itself, or a fresh copy per call."""

    module: nn.Module
    fresh_copy: bool = False

    def __call__(self) -> nn.Module:
        return copy.deepcopy(self.module) if self.fresh_copy else self.module


def state_hash(model: nn.Module) -> str:
    """sha256 (16 hex) of a module's state dict: names, shapes, dtypes and values."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def object_hash(obj: Any, extra: str = "") -> str:
    """Identity of a Python object: the code behind its class or function (:func:`kdlab.codeid.code_identity`: its
    module's file, or in a notebook / ``__main__`` its own source and the local helpers it calls)."""
    target = obj if inspect.isclass(obj) or inspect.isfunction(obj) else type(obj)
    digest = hashlib.sha256(f"{object_path(target)}|{extra}".encode())
    digest.update(code_identity(target).encode())
    if isinstance(obj, nn.Module):
        digest.update(repr(obj).encode())  # the architecture as built (constructor arguments included)
    return digest.hexdigest()[:16]


def plugin_identity(imports: list[str], names: list[str], live: Live) -> dict[str, str]:
    """What the run's plug-in code is: source hashes of the imported modules and of every object a name resolves to
    (live objects by their own hash, ``module:Name`` paths by their module's file)."""
    out = {f"live:{n}": live.hashes[n] for n in names if n in live.hashes}
    modules = module_names([n for n in names if n not in live.hashes])
    out.update(source_hashes(list(imports) + modules))
    return dict(sorted(out.items()))
