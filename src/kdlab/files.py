"""Crash-safe files: every write goes to a temporary file, is fsynced, then renamed over the target.

Weights are safetensors with a JSON metadata string under the ``kdlab`` key, so a weights file describes its own model
(see :mod:`kdlab.models.saved`). The training state beside them is in :mod:`kdlab.engine.checkpoint`.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from safetensors import SafetensorError, safe_open

from kdlab.errors import FILE_SYSTEM_ERRORS, CheckpointError, KdlabError

if TYPE_CHECKING:  # (torch loads with the first weights: the command line starts without it)
    import torch

METADATA_KEY = "kdlab"
LOW_SPACE = 1 << 20  # bytes: a write that fails with less free space than this failed for want of space


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)``, fsync, and atomically rename to ``path`` (same directory, so rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_file(path)
    mode = os.stat(tmp).st_mode & 0o777  # 0666 less the umask
    try:
        write(tmp)
        if os.stat(tmp).st_mode & 0o777 != mode:  # a writer that replaced the file (safetensors makes it 0600)
            os.chmod(tmp, mode)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        problem = _file_system_problem(path, exc)
        Path(tmp).unlink(missing_ok=True)
        if problem is not None:
            raise problem from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _file_system_problem(path: Path, exc: BaseException) -> OSError | None:
    """A failed write as the OSError of the file system's state, naming the target ``path`` (not the temporary file):
    writers report a full disk in their own ways (torch.save: "unexpected pos"; safetensors: "I/O error")."""
    if not isinstance(exc, (OSError, RuntimeError, SafetensorError)):
        return None
    code = exc.errno if isinstance(exc, OSError) else None
    text = str(exc)
    if code is None:
        try:
            stat = os.statvfs(path.parent)
        except OSError:
            return None
        if stat.f_flag & os.ST_RDONLY or "os error 30" in text:
            code = errno.EROFS
        elif stat.f_bavail * stat.f_frsize < LOW_SPACE or "os error 28" in text or "No space left" in text:
            code = errno.ENOSPC
    return OSError(code, os.strerror(code), str(path)) if code is not None else None


def _new_temp_file(path: Path) -> str:
    """An empty ``.<name>.<random>.tmp`` beside ``path``, created with mode 0666 so the user's umask applies (as to any
    file the user creates; ``tempfile.mkstemp`` would make it 0600)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path))


def remove_stale_temp_files(directory: str | Path) -> None:
    """Temporary files a killed process left mid-write in ``directory`` and its subfolders (never read: only renamed
    into place when complete). Call only while holding the directory's lock."""
    for tmp in Path(directory).rglob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


def sha256_file(path: str | Path) -> str:
    """The sha256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def directory_lock(directory: str | Path, what: str) -> Iterator[None]:
    """An exclusive, non-blocking lock on ``directory`` (its ``.lock`` file; released by the OS if the process dies):
    a second kdlab process working there is refused with one line naming ``what`` it is doing."""
    directory = Path(directory)
    if directory.is_symlink():
        raise KdlabError(f"{directory} is a symbolic link: kdlab writes only real folders inside out_dir; remove "
                         f"it, or choose another name")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a planted `.lock -> somewhere` is refused (ELOOP), never truncated through
        fd = os.open(directory / ".lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        handle = os.fdopen(fd, "w")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise KdlabError(f"{directory / '.lock'} is a symbolic link: kdlab writes only real files inside "
                             f"out_dir; remove it") from None
        known = FILE_SYSTEM_ERRORS.get(exc.errno) if exc.errno is not None else None
        reason = known or exc.strerror or str(exc)
        raise KdlabError(f"cannot create or write {directory}: {reason}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise KdlabError(f"another kdlab process is {what} in {directory}; wait for it to finish") from None
    try:
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def json_safe(value: Any) -> Any:
    """NaN and infinities become None (null): every JSON kdlab writes parses in any JSON parser."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_text(data: Any) -> str:
    """The exact text :func:`write_json` writes for ``data`` (so its sha256 can be recorded before it is written)."""
    return json.dumps(json_safe(data), indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json_text(data))


def find_symlink(directory: str | Path) -> Path | None:
    """The first symbolic link at ``directory`` or anywhere below it (links are not followed), or None: kdlab writes
    only inside out_dir, and a planted link would carry a write outside it."""
    directory = Path(directory)
    if directory.is_symlink():
        return directory
    if not directory.is_dir():
        return None
    for root, dirs, names in os.walk(directory):  # os.walk does not descend into linked folders
        for name in sorted(dirs + names):
            if os.path.islink(os.path.join(root, name)):
                return Path(root) / name
    return None


def save_weights(path: str | Path, state: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    """Save tensors as safetensors with ``meta`` (JSON-serializable) under the ``kdlab`` metadata key."""
    from safetensors.torch import save_file  # (loads torch: files.py stays importable without it, for the CLI)

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    metadata = {METADATA_KEY: json.dumps(meta or {}, sort_keys=True)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and kdlab metadata of a safetensors file."""
    from safetensors.torch import load_file  # (loads torch: files.py stays importable without it, for the CLI)

    meta = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except (OSError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({str(exc).splitlines()[0]})") from None
    return tensors, meta


def read_metadata(path: str | Path) -> dict:
    """The kdlab metadata of a safetensors file, without reading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get(METADATA_KEY, "{}"))
    except (OSError, ValueError, json.JSONDecodeError, SafetensorError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({str(exc).splitlines()[0]})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: malformed kdlab metadata (a {type(meta).__name__}, not a mapping)")
    return meta
