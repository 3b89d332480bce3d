"""Evaluation of a saved or live student on its data's validation and test splits, as its run evaluated it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from kdlab.config import DataConfig, from_dict
from kdlab.console import log
from kdlab.data import Splits, load_splits, make_loader
from kdlab.engine.device import resolve_device, use_bf16
from kdlab.engine.evaluate import evaluate
from kdlab.errors import ConfigError
from kdlab.models.probe import check_forward
from kdlab.models.saved import load_model
from kdlab.rundir import RunDir
from kdlab.runs.live import Live


def evaluate_checkpoint(path: str, overrides: dict | None = None, device_name: str = "auto",
                        imports: Sequence[str] = (), trust_code: bool = False) -> dict:
    """Evaluate a saved student (a run directory or a ``.safetensors`` file) on its dataset's val and test splits, as
    the run did: the same data settings (subset, validation split) and precision, unless ``overrides`` say otherwise."""
    device = resolve_device(device_name)
    check_saved(Path(path))
    model, meta = load_model(path, device, allowed_imports=imports, trust_code=trust_code)
    data_cfg = from_dict(DataConfig, {**meta.get("dataset", {}), **(overrides or {})}, prefix="dataset.")
    splits = load_splits(data_cfg)
    _check_fits(meta, splits.info, path)
    probe = make_loader(splits.test if len(splits.test) else splits.val, splits.info, data_cfg, train=False,
                        device=device)
    if probe.num_samples:
        check_forward(model, next(iter(probe)).images, str(path))
    bf16 = meta.get("precision") == "bf16" and use_bf16("auto", device)
    run_dir = Path(path).parent if Path(path).is_file() else Path(path)
    result: dict = {"epochs": meta.get("epoch"), "run_dir": str(run_dir), "model": meta.get("model"),
                    "precision": "bf16" if bf16 else "fp32", "data_unchanged": None}
    trained_on = _trained_fingerprint(run_dir)
    if trained_on is not None and not overrides:
        result["data_unchanged"] = trained_on == splits.fingerprint
        if not result["data_unchanged"]:
            log.warning(f"{run_dir}: the data on disk is not the data this run trained on (its fingerprint "
                        f"{splits.fingerprint} differs from the recorded {trained_on}): these are new numbers")
    return {**result, **_evaluate_splits(model, splits, data_cfg, device, bf16)}


def _trained_fingerprint(run_dir: Path) -> str | None:
    """The data fingerprint a run recorded in its meta.json (None for a bare weights file)."""
    try:
        return json.loads(RunDir(run_dir).meta.read_text()).get("data_fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def check_saved(path: Path) -> None:
    """A run directory, or a weights file of one, whose checksum (recorded when the run finished) no longer matches is
    refused (see :meth:`RunDir.check_finished`)."""
    run = RunDir(path if path.is_dir() else path.parent)
    if path.is_dir() or run.checksums.is_file():
        run.check_finished(None if path.is_dir() else path)


def evaluate_module(model: torch.nn.Module, data_cfg: DataConfig, live: Live, device_name: str = "auto",
                    precision: str = "auto") -> dict:
    """Val and test metrics of a module on the data ``data_cfg`` names (``live`` holds Dataset objects)."""
    device = resolve_device(device_name)
    splits = load_splits(data_cfg, data=live.data.get(data_cfg.name))
    bf16 = use_bf16(precision, device)
    model = model.to(device).eval()
    return {"model": type(model).__name__, "precision": "bf16" if bf16 else "fp32",
            **_evaluate_splits(model, splits, data_cfg, device, bf16)}


def _check_fits(meta: dict, info, path) -> None:
    if meta.get("in_channels") != info.in_channels or meta.get("num_classes") != info.num_classes:
        raise ConfigError(f"{path} takes {meta.get('in_channels')}-channel images of {meta.get('num_classes')} "
                          f"classes; this data has {info.in_channels} channel(s) and {info.num_classes} classes "
                          f"(dataset.channels=... repeats grey images)")


def _evaluate_splits(model, splits: Splits, data_cfg: DataConfig, device: torch.device, bf16: bool) -> dict:
    result: dict = {}
    for split in ("val", "test"):
        loader = make_loader(getattr(splits, split), splits.info, data_cfg, train=False, device=device)
        if loader.num_samples:
            metrics = evaluate(model, loader, device, bf16)
            result.update({f"{split}_{k}": v for k, v in metrics.items() if k != "n"})
    return result
