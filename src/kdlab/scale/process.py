"""What every process an experiment starts (a worker, a DDP rank) does first: leave with its parent, and prefix its
log lines with who it is."""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import threading

from kdlab.console import ensure_logging, log


def exit_with_parent() -> None:
    """End this process as soon as the process that started it is gone (a killed driver leaves no worker training)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="kdlab-parent-watch", daemon=True).start()


def prefix_logging(prefix: str) -> None:
    ensure_logging(application=True)
    for handler in log.handlers:
        handler.setFormatter(logging.Formatter(prefix + "%(message)s"))
