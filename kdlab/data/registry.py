"""The dataset registry: ``DATASETS.get(name)(cfg) -> RawDataset``, and where a dataset's files are looked for."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from kdlab.config import DataConfig
from kdlab.data.info import RawDataset
from kdlab.registry import Registry

Loader = Callable[[DataConfig], RawDataset]

DATASETS: Registry[Loader] = Registry("dataset")


def resolve_root(cfg: DataConfig, env_var: str, default: str) -> Path:
    """``cfg.root``, else the environment variable, else the dataset's default location (``~`` expanded)."""
    root = cfg.root or os.environ.get(env_var) or default
    return Path(root).expanduser()


def load_dataset(cfg: DataConfig) -> RawDataset:
    """Load the official train/test splits of ``cfg.name`` (unknown names raise a ConfigError listing valid ones)."""
    return DATASETS.get(cfg.name)(cfg)
