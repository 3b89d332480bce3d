"""Training objectives: ``ce`` and the distillation methods, one per file, registered by name."""

from kdlab.methods.base import BaseParams, Method
from kdlab.methods.registry import METHODS
from kdlab.methods import ce  # noqa: F401  (registers)

__all__ = ["METHODS", "Method", "BaseParams"]
