"""A run's identity: its resolved config, the plug-in code and objects it uses, its teacher's weights, and the
directory that holds it. Train-or-load rests on this: a directory that holds the same identity is loaded or resumed;
one that holds another is refused, never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from kdlab.config import TrainConfig, check_plain_name, to_dict
from kdlab.console import log
from kdlab.data import DATASETS
from kdlab.errors import ConfigError
from kdlab.methods import parse_method_params
from kdlab.models.registry import EXTERNAL_PREFIXES, MODELS, canonical_kwargs
from kdlab.models.saved import resolve_checkpoint
from kdlab.plugins import import_modules, module_names
from kdlab.rundir import RunDir
from kdlab.runs.ensemble import check_teachers, ensemble_identity
from kdlab.runs.live import Live, plugin_identity


def resolve_config(cfg: TrainConfig, live: Live | None = None) -> TrainConfig:
    """Import the config's plug-ins, check every name and hyperparameter (one-line errors, before any data is read),
    and write the method's hyperparameters out in full: ``method.T=4`` where 4 is the default is the same config."""
    import_modules(cfg.imports)
    live = live or Live()
    check_plain_name(cfg.name, "name")
    if cfg.model.name not in live.models and not cfg.model.name.startswith(EXTERNAL_PREFIXES):
        MODELS.get(cfg.model.name)
    if cfg.dataset.name not in live.data:
        DATASETS.get(cfg.dataset.name)
    method = live.methods.get(cfg.method.name, cfg.method.name)
    params = parse_method_params(method, cfg.method.params)
    if cfg.epochs < 1:
        raise ConfigError("config key 'epochs': must be at least 1")
    check_teachers(cfg.teacher, cfg.teacher_weights, cfg.teacher_mode)
    model = replace(cfg.model, kwargs=canonical_kwargs(cfg.model.name, cfg.model.kwargs))
    return replace(cfg, model=model, method=replace(cfg.method, params=to_dict(params)))


def default_run_name(cfg: TrainConfig, identity: dict) -> str:
    """``<model>-<method>-<dataset>-s<seed>-<8 hex of the run's key>``: changed settings, data, plug-in code or initial
    weights make a new run under a new name, where a fixed ``name=`` is refused instead (never a stale load)."""
    key = run_key(cfg, identity.get("teacher"), str(identity.get("data")), identity.get("plugins"))
    base = f"{cfg.model.name}-{cfg.method.name}-{cfg.dataset.name}-s{cfg.seed}".replace(":", "_").replace("/", "_")
    return f"{base}-{key[:8]}"


def run_dir_for(cfg: TrainConfig, identity: dict) -> Path:
    return Path(cfg.out_dir) / (cfg.name or default_run_name(cfg, identity))


# Config keys that do not decide a run's result: where it is written (a moved or copied run directory is the same run),
# the display, and the teacher's path and an ensemble's mode and weights (the teachers' weights' hashes are compared,
# in identity.json, with the mode and weights)
_NOT_IDENTITY = ("out_dir", "name", "progress", "teacher", "teacher_mode", "teacher_weights", "tracking",
                 "tracking_uri", "checkpoint_every_s")


def check_run_dir(run_dir: Path, cfg: TrainConfig, identity: dict, locked: bool = False) -> dict | None:
    """The finished result if ``run_dir`` already holds this run (its weights verified against their checksums);
    refuse a directory holding another run (another config, or the same config over other plug-in code, teacher or
    initial weights), unless that run stopped before its first checkpoint: then nothing of it is kept (its files are
    removed when ``locked``, i.e. by the process that holds the directory's lock)."""
    files_ = RunDir(run_dir)
    files_.check_ours()  # a folder kdlab did not make is never trained into, cleaned or overwritten
    previous = files_.require_config()
    if previous is None:
        return None
    now = to_dict(cfg)
    recorded, current = ({k: v for k, v in c.items() if k not in _NOT_IDENTITY} for c in (previous, now))
    changed = sorted(_diff_keys(recorded, current))
    if not changed:
        before = _read_identity(files_)
        changed = [f"identity.{k}" for k in sorted(set(before) | set(identity)) if before.get(k) != identity.get(k)]
    if changed and not files_.finished() and not files_.latest.is_file():
        if locked and files_.is_kdlab_run():
            log.info(f"{run_dir} holds a run that stopped before its first checkpoint; starting it over")
            _clear_unstarted(files_)
        return None
    if changed:
        raise ConfigError(f"{run_dir} holds a run with a different config ({', '.join(_explain(changed[:3]))}); "
                          f"set name=... or out_dir=... for a new run, or delete {run_dir} to train it again")
    if not files_.finished():
        return None
    files_.check_finished()
    return files_.verify_result()


_WHAT_CHANGED = {"identity.data": "identity.data: the data changed (its fingerprint differs)",
                 "identity.plugins": "identity.plugins: the code or initial weights of a model, dataset or method "
                                     "changed", "identity.teacher": "identity.teacher: the teacher's weights changed"}


def _explain(keys: list[str]) -> list[str]:
    return [_WHAT_CHANGED.get(k, k) for k in keys]


def _clear_unstarted(files_: RunDir) -> None:
    """The files a run that never reached its first checkpoint may have left, which must not mix with the next one."""
    for path in (files_.best, files_.failure, files_.metrics, files_.metrics_csv, files_.identity, files_.config):
        path.unlink(missing_ok=True)
    shutil.rmtree(files_.checkpoints, ignore_errors=True)


def _read_identity(files_: RunDir) -> dict:
    try:
        return json.loads(files_.identity.read_text())
    except (OSError, ValueError):
        return {}


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in set(a) | set(b) for k in _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def teacher_identity(name: str | list[str] | None, live: Live, weights: list[float] | None = None,
                     mode: str = "mean") -> str | dict | None:
    """What the teacher is: a live module's hash, or the sha256 of its weights file; for an ensemble (a list of
    two or more), its members' identities with its mode and weights (:func:`kdlab.runs.ensemble.ensemble_identity`)."""
    if name is None:
        return None
    if isinstance(name, list):
        if len(name) == 1:
            return teacher_identity(name[0], live)
        return ensemble_identity([teacher_identity(n, live) for n in name], weights, mode)
    if name in live.hashes:
        return live.hashes[name]
    path = resolve_checkpoint(name)
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def run_identity(cfg: TrainConfig, live: Live, data_fingerprint: str) -> dict:
    """What decides a run's result besides its config: plug-in code, given objects (their source and initial
    weights), the teacher's weights, and the data it trains, selects and tests on (``Splits.fingerprint``)."""
    names = [cfg.model.name, cfg.dataset.name, *cfg.method.name.split("+")]
    teacher = teacher_identity(cfg.teacher, live, cfg.teacher_weights, cfg.teacher_mode)
    return {"plugins": plugin_identity(cfg.imports, names, live), "teacher": teacher, "data": data_fingerprint}


def saved_imports(cfg: TrainConfig) -> list[str]:
    """Modules a new process must import to rebuild this run's model: the config's imports and the model's module."""
    return list(dict.fromkeys([*cfg.imports, *module_names([cfg.model.name])]))


def run_key(cfg: TrainConfig, teacher_key: str | dict | None, data_fingerprint: str,
            plugins: dict | None = None) -> str:
    """Hash of what determines a run's result (its resolved config, its teacher's key, the data and the source of the
    plug-in code it uses): not where it is written, how it is shown, or which device runs it."""
    payload = to_dict(cfg)
    # besides what a run directory's identity leaves out (the teacher and an ensemble's mode and weights are in
    # teacher_key): the device, the threads and the imports (their code is in plugins) do not key a run
    for volatile in (*_NOT_IDENTITY, "device", "threads", "imports"):
        payload.pop(volatile)
    identity = {"cfg": payload, "teacher": teacher_key, "data": data_fingerprint}
    if plugins:
        identity["plugins"] = plugins
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
