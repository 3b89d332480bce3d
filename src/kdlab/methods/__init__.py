"""Methods: ``ce`` and the distillation methods, one per file, registered by name.

``build_method(name, params, student, teacher)`` builds one (``a+b`` combines composable methods, see compose.py);
``method.prepare(images, num_samples=..., num_classes=...)`` must be called once before the optimizer is built
(adapters, heads and memory banks are created there); ``method(batch)`` returns the logits and the ``loss_*`` terms.
"""

from kdlab.methods.base import BaseParams, Context, Method, Setup, check_param
from kdlab.methods.registry import METHODS
from kdlab.methods import ce  # noqa: F401  (registers)
from kdlab.methods import kd, fitnets, kd_features, at, dml, byot, dkd, dist  # noqa: F401,E402  (register)
from kdlab.methods import rkd, pkt, sp, nst, vid, cc, reviewkd, crd, mlkd, ctkd  # noqa: F401,E402  (register)
from kdlab.methods import nkd, uskd, wkd, dot, deit, ofa  # noqa: F401,E402  (register)
from kdlab.methods.compose import Composite  # noqa: E402
from kdlab.methods.factory import build_method, method_params_cls, parse_method_params  # noqa: E402

__all__ = ["METHODS", "Method", "BaseParams", "Context", "Setup", "Composite", "build_method", "method_params_cls",
           "parse_method_params", "check_param"]
