"""The dataset keys' values, checked before any data is read (by the splits and by every loader)."""

from __future__ import annotations

from kdlab.config import DataConfig
from kdlab.errors import ConfigError


def check_data_config(cfg: DataConfig) -> None:
    """Reject values no loader can use, naming the key (ConfigError, one line)."""
    if not 0.0 <= cfg.val_ratio < 1.0:
        raise ConfigError(f"config key 'dataset.val_ratio': expected a number in [0, 1), got {cfg.val_ratio}")
    for key in ("batch_size", "eval_batch_size", "train_subset", "test_subset", "image_size"):
        value = getattr(cfg, key)
        if value is not None and value < 1:
            raise ConfigError(f"config key 'dataset.{key}': expected a positive integer, got {value}")
    for key in ("crop_padding", "workers", "pad"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"config key 'dataset.{key}': expected a non-negative integer, got {getattr(cfg, key)}")
    if cfg.channels is not None and cfg.channels < 1:
        raise ConfigError(f"config key 'dataset.channels': expected a positive integer, got {cfg.channels}")
