"""``kdlab``: train, distill, evaluate, list, run experiments and report.

    kdlab train model=resnet20 dataset=fashion_mnist epochs=1
    kdlab distill teacher=runs/resnet56-ce-fashion_mnist-s0 student=resnet8 method=kd method.T=4
    kdlab eval runs/resnet20-ce-fashion_mnist-s0
    kdlab list models 'resnet*'

Settings are ``key=value`` (YAML values) after an optional YAML file. Problems with the input print one line and
exit with code 2; ``train``/``distill``/``eval`` end by printing one line of JSON with the final metrics on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from kdlab.config import TrainConfig, from_dict, load_config
from kdlab.errors import KdlabError

EXIT_USAGE = 2


def _split_args(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """An optional leading YAML file, then key=value overrides."""
    path, overrides = None, []
    for arg in args:
        if "=" not in arg and arg.endswith((".yaml", ".yml")) and path is None and not overrides:
            path = arg
        elif "=" not in arg:
            raise KdlabError(f"expected key=value, got {arg!r}")
        else:
            overrides.append(arg)
    return path, overrides


def _train_config(args: Sequence[str], aliases: dict[str, str] | None = None) -> TrainConfig:
    path, overrides = _split_args(args)
    for old, new in (aliases or {}).items():
        overrides = [new + o[len(old):] if o.split("=")[0].split(".")[0] == old else o for o in overrides]
    cfg = load_config(TrainConfig, path, overrides)
    validate_train_config(cfg)
    return cfg


def validate_train_config(cfg: TrainConfig) -> None:
    """Check names and method hyperparameters before any data is loaded (fail fast, one line)."""
    from kdlab.data import DATASETS
    from kdlab.methods import method_params_cls
    from kdlab.models.registry import EXTERNAL_PREFIXES, MODELS

    if not cfg.model.name.startswith(EXTERNAL_PREFIXES):
        MODELS.get(cfg.model.name)
    DATASETS.get(cfg.dataset.name)
    from_dict(method_params_cls(cfg.method.name), cfg.method.params, prefix="method.")
    if cfg.epochs < 1:
        raise KdlabError("config key 'epochs': must be at least 1")


def cmd_train(args: argparse.Namespace) -> dict:
    from kdlab.runner.single import run

    return run(_train_config(args.settings))


def cmd_distill(args: argparse.Namespace) -> dict:
    from kdlab.runner.single import run

    cfg = _train_config(args.settings, aliases={"student": "model"})
    if cfg.method.name == "ce":
        raise KdlabError("distill needs a method (method=kd, fitnets, at, ...); use `kdlab train` for plain training")
    return run(cfg)


def cmd_eval(args: argparse.Namespace) -> dict:
    from kdlab.config import parse_value
    from kdlab.runner.single import evaluate_checkpoint

    _, overrides = _split_args(args.settings)
    data, device = {}, "auto"
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "device":
            device = value
        elif key.startswith("dataset."):
            data[key[len("dataset."):]] = parse_value(value)
        else:
            raise KdlabError(f"unknown eval setting {key!r}; allowed: device, dataset.<key>")
    return evaluate_checkpoint(args.checkpoint, data, device)


def cmd_list(args: argparse.Namespace) -> None:
    from kdlab.data import DATASETS
    from kdlab.methods import METHODS
    from kdlab.models import MODELS

    registry = {"models": MODELS, "datasets": DATASETS, "methods": METHODS}[args.what]
    for name in registry.list(args.pattern):
        print(name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdlab", description="Knowledge-distillation lab for image classification.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (("train", "train a model (teacher or baseline) with cross-entropy"),
                           ("distill", "train a student from a teacher with a distillation method")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("settings", nargs="*", help="[CONFIG.yaml] key=value ...")
    p = sub.add_parser("eval", help="evaluate a saved student (run directory or .safetensors)")
    p.add_argument("checkpoint")
    p.add_argument("settings", nargs="*", help="device=... dataset.root=...")
    p = sub.add_parser("list", help="list registered models, datasets or methods")
    p.add_argument("what", choices=["models", "datasets", "methods"])
    p.add_argument("pattern", nargs="?", default="*", help="shell-style wildcard, e.g. 'resnet*'")
    _add_lab_commands(sub)
    return parser


def _add_lab_commands(sub) -> None:
    """Experiment commands, when the lab runner is present."""
    try:
        from kdlab.runner import lab_cli
    except ImportError:
        return
    lab_cli.add_commands(sub)


COMMANDS: dict[str, Callable] = {"train": cmd_train, "distill": cmd_distill, "eval": cmd_eval, "list": cmd_list}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = getattr(args, "handler", None) or COMMANDS[args.command]
    try:
        result = handler(args)
    except KdlabError as exc:
        print(f"kdlab: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("kdlab: interrupted; the last finished epoch is checkpointed — run the same command to resume",
              file=sys.stderr)
        return 130
    if isinstance(result, dict):
        print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
