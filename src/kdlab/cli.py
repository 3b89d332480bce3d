"""``kdlab``: train, distill, evaluate, list, run experiments and report — a thin layer over the Python API.

    kdlab train model=resnet20 dataset=fashion_mnist epochs=1
    kdlab distill teacher=runs/teacher student=resnet8 method=kd method.T=4   # a run trained with name=teacher
    kdlab eval runs/teacher
    kdlab list models 'resnet*'
    kdlab run [EXPERIMENT.yaml] [key=value ...]
    kdlab report experiments/fmnist-demo

Settings are ``key=value`` (YAML values) after an optional YAML file. Problems with the input print one line and
exit with code 2; ``train``/``distill``/``eval`` end by printing one line of JSON with the final metrics on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from kdlab.config import TrainConfig, load_config, parse_value, split_args
from kdlab.console import ensure_logging, log
from kdlab.errors import ConfigError, KdlabError, user_message
from kdlab.files import json_safe
from kdlab.plugins import import_modules

EXIT_USAGE = 2


def _train_config(args: argparse.Namespace, aliases: dict[str, str] | None = None) -> TrainConfig:
    path, overrides = split_args(list(args.settings))
    for old, new in (aliases or {}).items():
        overrides = [new + o[len(old):] if o.split("=")[0].split(".")[0] == old else o for o in overrides]
    cfg = load_config(TrainConfig, path, overrides)
    cfg.imports = list(dict.fromkeys([*cfg.imports, *args.imports]))
    return cfg


def cmd_train(args: argparse.Namespace) -> dict:
    # lazy: the CLI starts without torch (kdlab run's fork server imports it first)
    from kdlab.runs.train import run

    return run(_train_config(args))


def cmd_distill(args: argparse.Namespace) -> dict:
    # lazy: the CLI starts without torch (kdlab run's fork server imports it first)
    from kdlab.runs.train import run

    cfg = _train_config(args, aliases={"student": "model"})
    if cfg.method.name == "ce":
        raise ConfigError("distill needs a method (method=kd, fitnets, at, ...); use `kdlab train` for plain training")
    return run(cfg)


def cmd_eval(args: argparse.Namespace) -> dict:
    # lazy: the CLI starts without torch (kdlab run's fork server imports it first)
    from kdlab.runs.evaluate import evaluate_checkpoint

    import_modules(args.imports)
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
    return evaluate_checkpoint(args.checkpoint, data, device, imports=args.imports)


def cmd_export(args: argparse.Namespace) -> dict:
    # lazy: the CLI starts without torch (kdlab run's fork server imports it first)
    from kdlab.export import export

    import_modules(args.imports)
    return export(args.source, format=args.format, out=args.out, int8=args.int8, device=args.device,
                  imports=args.imports)


def cmd_list(args: argparse.Namespace) -> None:
    # lazy: the CLI starts without torch (kdlab run's fork server imports it first)
    from kdlab.data import DATASETS
    from kdlab.methods import METHODS
    from kdlab.models import MODELS

    import_modules(args.imports)
    registry = {"models": MODELS, "datasets": DATASETS, "methods": METHODS}[args.what]
    for name in registry.list(args.pattern):
        print(name)


def cmd_run(args: argparse.Namespace) -> dict:
    # lazy: the CLI starts without torch (kdlab run's fork server imports it first)
    from kdlab.experiments.config import load_experiment_file

    path, overrides = split_args(args.settings)
    exp = load_experiment_file(path, overrides)
    if exp.executor == "local" and (exp.workers or 1) > 1:
        # lazy: the CLI starts without torch (kdlab run's fork server imports it first)
        from kdlab.scale.forkserver import start_worker_server

        start_worker_server()  # the workers' imports (torch) run while this process imports its own
    # lazy: the CLI starts without torch (kdlab run's fork server imports it first)
    from kdlab.experiments.runner import named_modules
    from kdlab.scale import run_experiment  # torch: after the fork server has started

    exp.imports = list(dict.fromkeys([*exp.imports, *args.imports]))
    server = _serve_live(exp.directory, args.port) if args.serve else None
    try:
        summary = run_experiment(exp)
        report = _report(exp.directory, exp.device, named_modules(exp))
    finally:
        if server is not None:
            server.shutdown()
    if exp.tracking == "mlflow":
        from kdlab.engine.tracking import log_experiment  # mlflow loads only when tracking is on

        log_experiment(exp.directory, exp.tracking_uri, exp.name)
    if summary["failed"]:
        first = summary["failed"][0]
        raise KdlabError(f"{len(summary['failed'])} of {summary['runs']} runs failed (the report has the others; run "
                         f"the same command to retry them): {Path(first['run_dir']).name}: {first['error']}")
    return {"experiment_dir": str(exp.directory), "report": str(report), **summary}


def _serve_live(directory: Path, port: int):
    """``kdlab run --serve``: the experiment's live page (refreshed by the runner after each run) on 127.0.0.1 while
    the experiment runs; the report replaces it at the end. Returns the server (``shutdown()`` stops it)."""
    # lazy: the CLI starts without torch (kdlab run's fork server imports it first)
    from kdlab.report.live import serve, write_live

    write_live(directory)
    url, server = serve(directory / "report", port)
    log.info(f"live view of {directory.name} at {url}live.html (the report at {url}index.html when it is written)")
    return server


def cmd_report(args: argparse.Namespace) -> dict:
    import_modules(args.imports)
    if args.serve:
        return _serve_report(Path(args.directory), args.device, args.port, args.imports)
    return {"report": str(_report(Path(args.directory), args.device, args.imports))}


def _serve_report(directory: Path, device: str, port: int, imports: Sequence[str] = ()) -> dict:
    """Serve the report folder on 127.0.0.1 until Ctrl-C: the report when every run is over, else the live page
    (refreshed here every few seconds), then the report once the last run ends."""
    # lazy: the CLI starts without torch (kdlab run's fork server imports it first)
    import time

    # lazy: the CLI starts without torch (kdlab run's fork server imports it first)
    from kdlab.report.live import experiment_status, finished, serve, write_live

    over = finished(experiment_status(directory)[1])
    if over:
        _report(directory, device, imports)
    write_live(directory)
    url, server = serve(directory / "report", port)
    log.info(f"serving {directory / 'report'} at {url}{'index.html' if over else 'live.html'} (Ctrl-C stops)")
    try:
        while True:
            time.sleep(5)
            if not over:
                over = finished(experiment_status(directory)[1])
                if over:
                    _report(directory, device, imports)
                write_live(directory)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    return {"report": str(directory / "report"), "url": url}


def _report(directory: Path, device: str, imports: Sequence[str] = ()) -> Path:
    # lazy: the CLI starts without torch (kdlab run's fork server imports it first)
    from kdlab.engine.device import resolve_device
    from kdlab.report import build_report

    path = build_report(directory, device=str(resolve_device(device)), log=log.info, imports=imports)
    log.info(f"report: {path}")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdlab", description="Knowledge-distillation lab for image classification.")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Callable, helptext: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=helptext)
        p.set_defaults(handler=handler)
        p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                       help="import a plug-in module first (its registered models, datasets, methods); repeatable")
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
    p = command("run", cmd_run, "run an experiment (default: the embedded Fashion-MNIST comparison)")
    p.add_argument("settings", nargs="*", help="[EXPERIMENT.yaml] key=value ...")
    p.add_argument("--serve", action="store_true", help="serve a live view of the experiment on http://127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="with --serve: the port (default: a free one)")
    p = command("report", cmd_report, "write the comparison report of an experiment directory")
    p.add_argument("directory")
    p.add_argument("--device", default="auto")
    p.add_argument("--serve", action="store_true",
                   help="serve the report on http://127.0.0.1 until Ctrl-C (while runs go on: a live progress page)")
    p.add_argument("--port", type=int, default=0, help="with --serve: the port (default: a free one)")
    return parser


def _take_imports(argv: list[str]) -> tuple[list[str], list[str]]:
    """``--import MODULE`` / ``--import=MODULE`` anywhere after the command (argparse cannot mix options into a
    positional list), and the arguments without them."""
    rest, modules = [], []
    tokens = iter(argv)
    for token in tokens:
        if token == "--import":
            modules.append(next(tokens, ""))
        elif token.startswith("--import="):
            modules.append(token.partition("=")[2])
        else:
            rest.append(token)
    return rest, modules


def main(argv: Sequence[str] | None = None) -> int:
    rest, modules = _take_imports(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(rest)
    args.imports = [*args.imports, *modules]
    ensure_logging(application=True)
    try:
        result = args.handler(args)
    except Exception as exc:  # expected failures become one line (see kdlab.errors.user_message); bugs re-raise
        message = user_message(exc)
        if message is None:
            raise
        print(f"kdlab: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("kdlab: interrupted; the last finished epoch is checkpointed — run the same command to resume",
              file=sys.stderr)
        return 130
    if isinstance(result, dict) and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 prints
        print(json.dumps(json_safe(result), sort_keys=True, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
