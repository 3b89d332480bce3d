"""User-facing errors.

Anything raised as a :class:`KdlabError` is a problem with the user's input (a config key, a path, a file); the CLI
prints its message on one line and exits with code 2. Everything else is a bug and keeps its traceback.
"""


class KdlabError(Exception):
    """A clear, one-line problem with the user's input."""


class ConfigError(KdlabError):
    """A config key or value that is unknown or of the wrong type."""


class DataError(KdlabError):
    """A dataset that is missing, truncated or malformed."""


class CheckpointError(KdlabError):
    """A checkpoint or weights file that is missing or does not fit the model."""


class DivergenceError(KdlabError):
    """Training stopped because a loss became NaN or infinite (the last good checkpoint is kept)."""
