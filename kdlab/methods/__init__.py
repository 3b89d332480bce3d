"""Training objectives: ``ce`` and the distillation methods, one per file, registered by name.

``build_method(name, params, student, teacher)`` builds one (``a+b`` combines composable methods, see compose.py);
``method.prepare(images)`` must be called once before the optimizer is built (feature adapters are created there).
"""

from kdlab.methods.base import BaseParams, Method
from kdlab.methods.registry import METHODS
from kdlab.methods import ce  # noqa: F401  (registers)
from kdlab.methods import kd, fitnets, kd_features, at, dml, byot, dkd, dist  # noqa: F401,E402  (register)
from kdlab.methods.compose import Composite, Context, Distiller  # noqa: E402
from kdlab.methods.factory import build_method, method_params_cls, parse_method_params  # noqa: E402

__all__ = ["METHODS", "Method", "BaseParams", "Distiller", "Composite", "Context", "build_method", "method_params_cls",
           "parse_method_params"]
