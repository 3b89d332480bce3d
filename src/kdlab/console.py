"""Human-readable output: the ``kdlab`` logger (progress lines on stderr; stdout is kept for machine-readable results).

Nothing is printed on import. The CLI, and the Python API when the application has set up no logging of its own,
send the logger's INFO lines to stderr; an application that configures logging gets them through its handlers.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("kdlab")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a notebook or a test may replace it)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the current sys.stderr always wins
        pass


def ensure_logging(application: bool = False) -> None:
    """Send kdlab's INFO lines to stderr, unless the application (or an earlier call) has set up logging.

    ``application=True`` (the CLI, which is the application) sends them to stderr whatever the root logger has.
    """
    if any(isinstance(h, _StderrHandler) for h in log.handlers):
        return
    if not application and (log.handlers or logging.getLogger().handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
