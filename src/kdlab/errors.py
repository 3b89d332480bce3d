"""User-facing errors.

Anything raised as a :class:`KdlabError` is a problem with the user's input (a config key, a path, a file); the CLI
prints its message on one line and exits with code 2. :func:`user_message` is the one place that also recognizes the
other expected failures (a full or read-only file system, a file that is not what its name says) and gives them the
same one-line treatment; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import json
import pickle


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


class InputShapeError(KdlabError):
    """A model cannot take the images its data gives it (too small, another number of channels)."""


class ReportError(KdlabError):
    """An experiment directory that cannot be reported on (no or malformed manifest, nothing finished)."""


class StorageError(KdlabError):
    """A worker cannot see the experiment directory the driver writes."""


# What a failed write or read means to the user, by errno: the file system's state, not a bug of kdlab.
FILE_SYSTEM_ERRORS = {
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.EMFILE: "too many open files",
}


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def user_message(exc: BaseException) -> str | None:
    """The one-line message for an expected failure, or None for a bug (whose traceback must be shown).

    Expected: a :class:`KdlabError`; an ``OSError`` of the file system (read-only, full, over quota, no permission;
    named with its path); a file that does not parse (safetensors, pickle or JSON decoding errors, which reach here
    only where no reader named the file first).
    """
    if isinstance(exc, KdlabError):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno in FILE_SYSTEM_ERRORS:
        path = exc.filename if exc.filename is not None else "a file"
        return f"cannot use {path}: {FILE_SYSTEM_ERRORS[exc.errno]}"
    if isinstance(exc, (json.JSONDecodeError, pickle.UnpicklingError, EOFError)):
        return f"a file is damaged or not the expected format ({type(exc).__name__}: {first_line(exc)})"
    if type(exc).__name__ == "SafetensorError":  # safetensors' own type, not imported here (errors is a base module)
        return f"a weights file is damaged or not safetensors ({first_line(exc)})"
    return None
