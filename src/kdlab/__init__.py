"""kdlab: a knowledge-distillation lab for image classification.

    import kdlab
    teacher = kdlab.train(model="resnet20", data="fashion_mnist", epochs=4)
    student = kdlab.distill(student=MyNet(), teacher=teacher, method="kd", epochs=3)
    exp = kdlab.Experiment("configs/my_experiment.yaml"); exp.run(); exp.report()

Importing kdlab is cheap and prints nothing: the API's names load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute)
_API = {
    "train": ("kdlab.api", "train"),
    "distill": ("kdlab.api", "distill"),
    "evaluate": ("kdlab.api", "evaluate"),
    "Run": ("kdlab.runs.result", "Run"),
    "Experiment": ("kdlab.experiment", "Experiment"),
    "Report": ("kdlab.experiment", "Report"),
    "export": ("kdlab.export", None),  # the package itself, which is callable: kdlab.export(...) exports
    "Batch": ("kdlab.batch", "Batch"),
    "Method": ("kdlab.methods.base", "Method"),
    "BaseParams": ("kdlab.methods.base", "BaseParams"),
    "Context": ("kdlab.methods.base", "Context"),
    "create_model": ("kdlab.models", "create_model"),
    "list_models": ("kdlab.models", "list_models"),
    "load_model": ("kdlab.models.saved", "load_model"),
    "MODELS": ("kdlab.models", "MODELS"),
    "METHODS": ("kdlab.methods", "METHODS"),
    "DATASETS": ("kdlab.data", "DATASETS"),
    "KdlabError": ("kdlab.errors", "KdlabError"),
}
_DECORATORS = {"register_model": "MODELS", "register_method": "METHODS", "register_dataset": "DATASETS"}

__all__ = ["__version__", *_API, *_DECORATORS]


def __getattr__(name: str) -> Any:
    if name in _API:
        module, attr = _API[name]
        imported = importlib.import_module(module)
        return imported if attr is None else getattr(imported, attr)
    if name in _DECORATORS:  # kdlab.register_model("tiny") == kdlab.MODELS.register("tiny")
        return __getattr__(_DECORATORS[name]).register
    raise AttributeError(f"module 'kdlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
