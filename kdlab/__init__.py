"""kdlab: a knowledge-distillation lab for image classification."""

__version__ = "0.1.0"
