"""Human-readable output: the ``kdlab`` logger (progress lines on stderr; stdout is kept for machine-readable results).

Nothing is printed on import. The CLI, and the Python API when the application has set up no logging of its own,
send the logger's INFO lines to stderr; an application that configures logging gets them through its handlers.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

log = logging.getLogger("kdlab")

Display = Literal["terminal", "notebook", "lines"]


def display() -> Display:
    """Where stderr goes now: a ``terminal`` (a live progress bar redraws in place), a Jupyter ``notebook`` (redraws
    too, but each one is a message to the browser) or anything else, ``lines`` (a file, a pipe, CI, nohup), where a
    bar's carriage-return frames would pile up in the log, so progress is written as a few whole lines instead."""
    stream = sys.stderr
    if type(stream).__module__.startswith("ipykernel"):  # ipykernel.iostream.OutStream: isatty() is False there
        return "notebook"
    try:
        return "terminal" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "lines"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a notebook or a test may replace it)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__ assigns it; the current sys.stderr always wins
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
