"""Hyperparameter sweeps: an experiment's ``sweep`` expands method entries into one labelled entry per point.

    methods: [kd, at]
    sweep: {kd.T: [1, 2, 4, 8], kd.alpha: [0.5, 0.9]}     # the grid: 8 entries kd[T=1,alpha=0.5] ... kd[T=8,alpha=0.9]
    sweep_samples: 5                                         # or 5 random points of it (seeded by sweep_seed)
    sweep: {kd.T: {low: 1, high: 8, log: true}}              # with sweep_samples: drawn from a range

A key is ``<method label>.<hyperparameter>`` (a composite's part is namespaced as usual: ``kd+at.kd.T``). The swept
entry is replaced by its points; each keeps the entry's other settings, and its runs carry the point as their
manifest ``labels`` (``{"kd.T": 2, "kd.alpha": 0.9}``), which the report's sweep table and figure read.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import replace
from typing import Any

from kdlab.errors import ConfigError
from kdlab.experiments.config import ExperimentConfig, MethodEntry


def method_entries(exp: ExperimentConfig) -> list[tuple[MethodEntry, dict]]:
    """The experiment's method entries with the sweep expanded: ``(entry, labels)``, labels empty when not swept."""
    if not exp.sweep:
        return [(m, {}) for m in exp.methods]
    targets = {key: _target(key, exp.methods) for key in exp.sweep}
    out: list[tuple[MethodEntry, dict]] = []
    for number, entry in enumerate(exp.methods):
        mine = {k: exp.sweep[k] for k, (label, _) in targets.items() if label == entry.display}
        if not mine:
            out.append((entry, {}))
            continue
        for point in sweep_points(mine, exp.sweep_samples, exp.sweep_seed + number):
            params = dict(entry.params)
            for key, value in point.items():
                params[targets[key][1]] = value
            shown = ",".join(f"{targets[k][1]}={format_value(v)}" for k, v in point.items())
            out.append((replace(entry, label=f"{entry.display}[{shown}]", params=params), dict(point)))
    return out


def _target(key: str, methods: list[MethodEntry]) -> tuple[str, str]:
    """(method label, hyperparameter path) a sweep key names: the longest label the key starts with."""
    labels = sorted({m.display for m in methods}, key=len, reverse=True)
    for label in labels:
        if key.startswith(label + ".") and len(key) > len(label) + 1:
            return label, key[len(label) + 1:]
    raise ConfigError(f"sweep key {key!r} names no method entry; write <method label>.<hyperparameter> "
                      f"(method labels: {', '.join(sorted(labels)) or 'none'})")


def sweep_points(space: dict[str, Any], samples: int = 0, seed: int = 0) -> list[dict]:
    """The grid of ``space`` (key -> list of values), or ``samples`` random points of it (without repetition when
    every key is a list; keys given as ``{low, high, log}`` ranges are drawn independently)."""
    ranges = {k: v for k, v in space.items() if isinstance(v, dict)}
    for key, values in space.items():
        if key not in ranges and (not isinstance(values, (list, tuple)) or not values):
            raise ConfigError(f"config key 'sweep.{key}': expected a non-empty list of values or {{low, high}}")
    if ranges and samples <= 0:
        raise ConfigError(f"config key 'sweep.{next(iter(ranges))}': a range needs sweep_samples > 0")
    rng = random.Random(seed)
    if not ranges:
        grid = [dict(zip(space, combo)) for combo in itertools.product(*space.values())]
        return grid if samples <= 0 or samples >= len(grid) else rng.sample(grid, samples)
    points = []
    for _ in range(samples):
        points.append({k: _draw(k, v, rng) if k in ranges else rng.choice(list(v)) for k, v in space.items()})
    return points


def _draw(key: str, spec: dict, rng: random.Random) -> float | int:
    unknown = set(spec) - {"low", "high", "log"}
    if unknown or "low" not in spec or "high" not in spec:
        raise ConfigError(f"config key 'sweep.{key}': a range is {{low, high, log}}; got {sorted(spec)}")
    low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (low, high)) or not low < high:
        raise ConfigError(f"config key 'sweep.{key}': expected numbers low < high, got {low!r}, {high!r}")
    if log and low <= 0:
        raise ConfigError(f"config key 'sweep.{key}': a log range needs low > 0")
    value = math.exp(rng.uniform(math.log(low), math.log(high))) if log else rng.uniform(low, high)
    if isinstance(low, int) and isinstance(high, int) and not log:
        return int(round(value))
    return float(f"{value:.4g}")


def format_value(value: Any) -> str:
    """How a swept value appears in a label: ``2``, ``0.9``, ``1e-05``, ``true``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
