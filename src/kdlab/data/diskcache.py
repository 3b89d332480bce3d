"""``dataset.cache=disk``: a one-time decoded copy of an image folder, memory-mapped by the DataLoader workers.

Format: one Arrow file written by Hugging Face ``datasets`` (``pip install kdlab[hf]``), one row per image file of
the split folder in listing order: ``path`` (relative to the folder), ``image`` (the base, uint8 ``S x S x 3``
bytes; see :mod:`kdlab.data.recipes`) and ``error`` (empty, or the one-line message of a bad file). Workers open it
memory-mapped (``Dataset.from_file``), so no process copies it; the page cache is shared. Measured on 2,000 random
256x256 images (benchmarks/README.md): 38-63 us per random row read against 45 us for a plain numpy memmap, so a
well-kept format costs nothing here.

Where: ``dataset.cache_dir``, else ``$XDG_CACHE_HOME/kdlab``, else ``~/.cache/kdlab`` (the user's own folders; never
beside the data, which may be read-only or shared). The name is keyed by the folder's fingerprint and the stored
side: ``imagefolder-<folder name>-<fingerprint>-<side>.arrow``; a changed folder or size makes a new copy (old
copies are not deleted). The copy is written to a temporary name and renamed at the end, so a killed build leaves
no half copy in use (the next run builds it again).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from kdlab.data.imagefolder import folder_fingerprint, scan_split
from kdlab.data.stream import ArraySource, FileSource, decode_bases
from kdlab.errors import ConfigError, DataError

FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/kdlab`` or ``~/.cache/kdlab``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kdlab"


def cache_file(folder: str | Path, side: int, cache_dir: str | Path | None = None,
               fingerprint: str | None = None) -> Path:
    """Where the disk copy of ``folder`` at stored side ``side`` lives (keyed by the folder's fingerprint)."""
    folder = Path(folder)
    key = fingerprint or folder_fingerprint(folder)
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    label = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{folder.parent.name}-{folder.name}")
    return root / f"imagefolder-{label}-{key}-{side}-v{FORMAT_VERSION}.arrow"


def _datasets() -> Any:
    try:
        import datasets  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigError("config key 'dataset.cache': disk needs the datasets package "
                          "(pip install 'kdlab[hf]' or pip install datasets)") from None
    return datasets


def build_cache(folder: str | Path, side: int, path: Path, workers: int = 0) -> Path:
    """Decode every image of ``folder`` to its base (``side``) into the Arrow file ``path`` (temp name, renamed)."""
    datasets = _datasets()
    from datasets.arrow_writer import ArrowWriter  # type: ignore[import-untyped]

    folder = Path(folder)
    paths, _, _ = scan_split(folder)
    features = datasets.Features({"path": datasets.Value("string"), "image": datasets.Value("binary"),
                                  "error": datasets.Value("string")})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    writer = ArrowWriter(features=features, path=str(tmp), writer_batch_size=256)
    blank = bytes(side * side * 3)

    def write(row: int, image: np.ndarray | None, error: str | None) -> None:
        writer.write({"path": os.path.relpath(paths[row], folder), "error": error or "",
                      "image": blank if image is None else np.ascontiguousarray(image).tobytes()})

    try:
        decode_bases(FileSource(paths, side), side, workers, skip=True, on_row=write)
        writer.finalize()
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(tmp, path)
    return path


class ArrowSource(ArraySource):
    """Bases read from the disk cache, memory-mapped; opened lazily in each process that reads it."""

    def __init__(self, path: Path, side: int, rows: list[int], errors: dict[int, str]) -> None:
        super().__init__(np.zeros((0, side, side, 3), np.uint8), rows, errors)
        self.path, self.side = path, side
        self._column: Any = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_column": None}  # a worker maps the file itself

    def base(self, index: int) -> np.ndarray:
        row = self.rows[index] if self.rows is not None else index
        if row in self.errors:
            raise DataError(self.errors[row])
        if self._column is None:
            self._column = _datasets().Dataset.from_file(str(self.path)).data.table.column("image")
        buffer = self._column[row].as_buffer()
        return np.frombuffer(buffer, dtype=np.uint8).reshape(self.side, self.side, 3)


def open_cache(folder: str, paths: list[str], side: int, cache_dir: str | None, workers: int,
               fingerprint: str | None = None) -> ArrowSource:
    """The disk copy of ``folder`` (built first when missing) as a source of ``paths``' bases, in that order."""
    path = cache_file(folder, side, cache_dir, fingerprint)
    if not path.is_file():
        build_cache(folder, side, path, workers)
    table = _datasets().Dataset.from_file(str(path)).data.table
    names = table.column("path").to_pylist()
    errors_by_row = {i: e for i, e in enumerate(table.column("error").to_pylist()) if e}
    row_of = {name: i for i, name in enumerate(names)}
    rows = []
    for p in paths:
        row = row_of.get(os.path.relpath(p, folder))
        if row is None:
            raise DataError(f"disk cache {path} has no row for {p}; delete the file to rebuild it")
        rows.append(row)
    return ArrowSource(path, side, rows, errors_by_row)
