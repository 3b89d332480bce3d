"""The dataset registry: ``DATASETS.get(name)(cfg) -> RawDataset``, and where a dataset's files are looked for."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Callable

from kdlab.config import DataConfig
from kdlab.registry import Registry

# A registered loader takes the DataConfig and returns a RawDataset; a plug-in's dataset function (``module:name``) may
# take no argument and may return the user's Dataset objects instead (see :func:`load_dataset`).
Loader = Callable[..., Any]


class DatasetRegistry(Registry[Loader]):
    """The registry, where a registered name may also take a location: ``hf:PATH`` is the ``hf`` loader (which reads
    ``PATH`` from the config's name)."""

    def get(self, name: str) -> Loader:
        prefix, sep, rest = name.partition(":")
        if sep and rest and prefix in self and name not in self:
            return super().get(prefix)
        return super().get(name)


DATASETS: Registry[Loader] = DatasetRegistry("dataset")


def resolve_root(cfg: DataConfig, env_var: str, default: str) -> Path:
    """``cfg.root``, else the environment variable, else the dataset's default location (``~`` expanded)."""
    root = cfg.root or os.environ.get(env_var) or default
    return Path(root).expanduser()


def load_dataset(cfg: DataConfig) -> Any:
    """The official train/test splits of ``cfg.name`` (unknown names raise a ConfigError listing valid ones).

    A plug-in's dataset function (``dataset=my_data:make_dataset``) is called with the DataConfig when it takes an
    argument, else with none; it may return a RawDataset or Dataset objects (see :mod:`kdlab.data.custom`).
    """
    loader = DATASETS.get(cfg.name)
    try:
        takes_config = bool(inspect.signature(loader).parameters)
    except (TypeError, ValueError):
        takes_config = True
    return loader(cfg) if takes_config else loader()
