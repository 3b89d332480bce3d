"""Per-run cache of what a report computes from a run's checkpoints, so a second report takes seconds.

    <run_dir>/eval_cache.json           metrics of the last and the val-selected weights, reliability bins, input
                                        shape, and (for one run per architecture) efficiency measurements
    <run_dir>/test_logits.safetensors   fp32 test logits ("last", and "selected" when it differs) and the labels

Both carry the same key: size and mtime (ns) of ``model.safetensors`` and ``best.safetensors``, and a hash of the
dataset settings the test split is built from. (A teacher given as a finished checkpoint has its cache under
``EXP/report/cache/``, keyed on that file.) A retrained or re-selected checkpoint, or a different test set,
changes the key and the run is evaluated again; nothing else is trusted.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from kdlab.console import log
from kdlab.files import atomic_write, write_json

CACHE_VERSION = 1
CACHE_JSON = "eval_cache.json"
LOGITS_FILE = "test_logits.safetensors"
_KEY_META = "kdlab_report_key"


def file_stamp(path: Path) -> list[int] | None:
    """[size, mtime_ns] of a file, or None when it does not exist."""
    if not path.is_file():
        return None
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def dataset_hash(dataset: dict) -> str:
    return hashlib.sha256(json.dumps(dataset, sort_keys=True).encode()).hexdigest()[:16]


def cache_key(model: Path, best: Path | None, dataset: dict) -> dict:
    """What the cached predictions depend on: both weight files (by size and mtime) and the test-data settings."""
    return {"version": CACHE_VERSION, "model": file_stamp(model), "best": file_stamp(best) if best else None,
            "data": dataset_hash(dataset)}


def read_cache(run_dir: Path, key: dict) -> dict | None:
    """The cached metrics of ``run_dir`` when both cache files exist and carry ``key``; else None."""
    path, logits_path = run_dir / CACHE_JSON, run_dir / LOGITS_FILE
    if not path.is_file() or not logits_path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        with safe_open(str(logits_path), framework="pt") as fh:
            logits_key = json.loads((fh.metadata() or {}).get(_KEY_META, "null"))
    except (OSError, ValueError, SafetensorError):  # a torn or foreign file is just a cache miss
        return None
    if not isinstance(data, dict):

        log.warning(f"warning: {path} is malformed (not a mapping); ignoring it and evaluating the run again")
        return None
    if data.get("key") != key or logits_key != key:
        return None
    return data


def write_cache(run_dir: Path, key: dict, data: dict[str, Any], logits: dict[str, torch.Tensor] | None = None) -> None:
    """Write the logits (when given) first, then the JSON: a crash in between leaves a cache miss, never a mismatch."""
    if logits is not None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in logits.items()}
        metadata = {_KEY_META: json.dumps(key, sort_keys=True)}
        atomic_write(run_dir / LOGITS_FILE, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    write_json(run_dir / CACHE_JSON, {**data, "key": key})


def read_logits(run_dir: Path) -> dict[str, torch.Tensor]:
    """The cached test logits of a run (call after a successful :func:`read_cache` or :func:`write_cache`)."""
    return load_file(str(run_dir / LOGITS_FILE))
