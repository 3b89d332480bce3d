"""The method registry (its own module so that method files can import it without import cycles)."""

from kdlab.registry import Registry

METHODS: Registry = Registry("method")
