"""``kdlab``: train, distill, evaluate, list, run experiments and report — a thin layer over the Python API.

    kdlab train model=resnet20 dataset=fashion_mnist epochs=1
    kdlab distill teacher=runs/resnet56-ce-fashion_mnist-s0 student=resnet8 method=kd method.T=4
    kdlab eval runs/resnet20-ce-fashion_mnist-s0
    kdlab list models 'resnet*'
    kdlab run [EXPERIMENT.yaml] [key=value ...]
    kdlab report experiments/fmnist-demo

Settings are ``key=value`` (YAML values) after an optional YAML file. Problems with the input print one line and
exit with code 2; ``train``/``distill``/``eval`` end by printing one line of JSON with the final metrics on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from kdlab.config import TrainConfig, load_config, parse_value, split_args
from kdlab.errors import ConfigError, KdlabError

EXIT_USAGE = 2


def _train_config(args: Sequence[str], aliases: dict[str, str] | None = None) -> TrainConfig:
    from kdlab.runner.single import validate_train_config

    path, overrides = split_args(list(args))
    for old, new in (aliases or {}).items():
        overrides = [new + o[len(old):] if o.split("=")[0].split(".")[0] == old else o for o in overrides]
    cfg = load_config(TrainConfig, path, overrides)
    validate_train_config(cfg)
    return cfg


def cmd_train(args: argparse.Namespace) -> dict:
    from kdlab.runner.single import run

    return run(_train_config(args.settings))


def cmd_distill(args: argparse.Namespace) -> dict:
    from kdlab.runner.single import run

    cfg = _train_config(args.settings, aliases={"student": "model"})
    if cfg.method.name == "ce":
        raise ConfigError("distill needs a method (method=kd, fitnets, at, ...); use `kdlab train` for plain training")
    return run(cfg)


def cmd_eval(args: argparse.Namespace) -> dict:
    from kdlab.runner.single import evaluate_checkpoint

    _, overrides = split_args(args.settings)
    data, device = {}, "auto"
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "device":
            device = value
        elif key.startswith("dataset."):
            data[key[len("dataset."):]] = parse_value(value)
        else:
            raise ConfigError(f"unknown eval setting {key!r}; allowed: device, dataset.<key>")
    return evaluate_checkpoint(args.checkpoint, data, device)


def cmd_export(args: argparse.Namespace) -> dict:
    from kdlab.export import export

    return export(args.source, format=args.format, out=args.out, int8=args.int8, device=args.device)


def cmd_list(args: argparse.Namespace) -> None:
    from kdlab.data import DATASETS
    from kdlab.methods import METHODS
    from kdlab.models import MODELS

    registry = {"models": MODELS, "datasets": DATASETS, "methods": METHODS}[args.what]
    for name in registry.list(args.pattern):
        print(name)


def cmd_run(args: argparse.Namespace) -> dict:
    from kdlab.runner.experiment import Experiment
    from kdlab.runner.plan import load_experiment_file

    path, overrides = split_args(args.settings)
    exp = load_experiment_file(path, overrides)
    summary = Experiment(exp).run()
    report = _report(exp.directory, exp.device)
    return {"experiment_dir": str(exp.directory), "report": str(report), **summary}


def cmd_report(args: argparse.Namespace) -> dict:
    return {"report": str(_report(Path(args.directory), args.device))}


def _report(directory: Path, device: str) -> Path:
    from kdlab.engine.device import resolve_device
    from kdlab.report import build_report

    path = build_report(directory, device=str(resolve_device(device)), log=lambda m: print(m, file=sys.stderr))
    print(f"report: {path}", file=sys.stderr)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdlab", description="Knowledge-distillation lab for image classification.")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Callable, helptext: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=helptext)
        p.set_defaults(handler=handler)
        return p

    command("train", cmd_train, "train a model (teacher or baseline) with cross-entropy").add_argument(
        "settings", nargs="*", help="[CONFIG.yaml] key=value ...")
    command("distill", cmd_distill, "train a student from a teacher with a distillation method").add_argument(
        "settings", nargs="*", help="[CONFIG.yaml] key=value ...")
    p = command("eval", cmd_eval, "evaluate a saved student (run directory or .safetensors)")
    p.add_argument("checkpoint")
    p.add_argument("settings", nargs="*", help="device=... dataset.root=...")
    p = command("export", cmd_export, "export a student to ONNX/TorchScript/ExportedProgram, verify it, write a card")
    p.add_argument("source", metavar="RUN_DIR|CHECKPOINT")
    p.add_argument("--format", default="onnx", help="onnx (default), torchscript or exported-program")
    p.add_argument("--int8", action="store_true", help="also an onnxruntime static int8 model (onnx only)")
    p.add_argument("--out", default=None, help="folder or model file (default: RUN_DIR/export/FORMAT/)")
    p.add_argument("--device", default="cpu", help="where the PyTorch reference runs (default: cpu)")
    p = command("list", cmd_list, "list registered models, datasets or methods")
    p.add_argument("what", choices=["models", "datasets", "methods"])
    p.add_argument("pattern", nargs="?", default="*", help="shell-style wildcard, e.g. 'resnet*'")
    command("run", cmd_run, "run an experiment (default: the embedded Fashion-MNIST comparison)").add_argument(
        "settings", nargs="*", help="[EXPERIMENT.yaml] key=value ...")
    p = command("report", cmd_report, "write the comparison report of an experiment directory")
    p.add_argument("directory")
    p.add_argument("--device", default="auto")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.handler(args)
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
