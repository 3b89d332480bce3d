"""``kdlab run [EXPERIMENT.yaml] [key=value ...]`` and ``kdlab report DIR``."""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from kdlab.config import apply_overrides, load_yaml

DEFAULT_EXPERIMENT = "fmnist_demo.yaml"


def default_experiment_path() -> Path:
    return Path(str(resources.files("kdlab") / "configs" / DEFAULT_EXPERIMENT))


def load_experiment_file(path: str | None, overrides: list[str]):
    from kdlab.runner.plan import load_experiment

    tree = load_yaml(path or default_experiment_path())
    return load_experiment(apply_overrides(tree, overrides))


def cmd_run(args: argparse.Namespace) -> dict:
    from kdlab.cli import _split_args
    from kdlab.runner.experiment import Experiment

    path, overrides = _split_args(args.settings)
    exp = load_experiment_file(path, overrides)
    summary = Experiment(exp).run()
    report = _report(exp.directory, exp.device)
    return {"experiment_dir": str(exp.directory), "report": str(report), **summary}


def cmd_report(args: argparse.Namespace) -> dict:
    return {"report": str(_report(Path(args.directory), args.device))}


def _report(directory: Path, device: str) -> Path:
    import sys

    from kdlab.engine.device import resolve_device
    from kdlab.report import build_report

    path = build_report(directory, device=str(resolve_device(device)), log=lambda m: print(m, file=sys.stderr))
    print(f"report: {path}", file=sys.stderr)
    return path


def add_commands(sub) -> None:
    p = sub.add_parser("run", help="run an experiment (default: the embedded Fashion-MNIST comparison)")
    p.add_argument("settings", nargs="*", help="[EXPERIMENT.yaml] key=value ...")
    p.set_defaults(handler=cmd_run)
    p = sub.add_parser("report", help="write the comparison report of an experiment directory")
    p.add_argument("directory")
    p.add_argument("--device", default="auto")
    p.set_defaults(handler=cmd_report)
