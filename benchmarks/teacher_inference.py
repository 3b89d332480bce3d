#!/usr/bin/env python
"""The frozen teacher's forward pass: which inference form is fastest here, with the same outputs? (issue 13)

Variants, each timed in interleaved rounds (median images/second over the rounds) and compared with the plain
module's logits on the same batch:

    plain       the teacher as trained, eval(), no_grad, kdlab's bf16 autocast (where the CPU does bf16), channels_last
    folded      BatchNorm folded into the convolutions (kdlab/engine/inference.py), otherwise the same
    folded-bf16 folded, with weights and input stored in bf16 (no autocast cast of the weights at every call)
    compiled    folded, under torch.compile (--compile: 25-35 s of compilation per model on this CPU)

    .venv/bin/python benchmarks/teacher_inference.py                        # resnet56, resnet20, resnet32x4; batch 64
    .venv/bin/python benchmarks/teacher_inference.py --models resnet56 --batch-size 256 --threads 1

The last line of stdout is one JSON object: per model and variant, img/s (median), the rounds, and the max absolute
logit difference from ``plain``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

try:
    import kdlab  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kdlab.engine.device import autocast, use_bf16  # noqa: E402
from kdlab.engine.host import OtherLoad, tune_cpu_allocator  # noqa: E402
from kdlab.engine.inference import fold_batchnorm  # noqa: E402
from kdlab.models import create_model  # noqa: E402


def variants(model: torch.nn.Module, bf16: bool, compile_: bool) -> dict:
    cl = torch.channels_last
    plain = model.eval().to(memory_format=cl)
    folded = fold_batchnorm(plain).to(memory_format=cl)
    out = {"plain": (plain, bf16, torch.float32), "folded": (folded, bf16, torch.float32)}
    if bf16:
        out["folded-bf16"] = (copy.deepcopy(folded).to(torch.bfloat16), False, torch.bfloat16)
    if compile_:
        out["compiled"] = (torch.compile(folded), bf16, torch.float32)
    return out


def rate(model, x: torch.Tensor, cast: bool, steps: int) -> float:
    start = time.perf_counter()
    with torch.no_grad(), autocast(torch.device("cpu"), cast):
        for _ in range(steps):
            model(x)
    return steps * len(x) / (time.perf_counter() - start)


def measure(name: str, args: argparse.Namespace, bf16: bool) -> dict:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=args.shape[0])
    for module in model.modules():  # trained-looking BatchNorm statistics, so folding is really exercised
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    x = torch.randn(args.batch_size, *args.shape).contiguous(memory_format=torch.channels_last)
    forms = variants(model, bf16, args.compile)
    with torch.no_grad(), autocast(torch.device("cpu"), bf16):
        reference = forms["plain"][0](x).float()
    result: dict = {}
    for key, (module, cast, dtype) in forms.items():
        with torch.no_grad(), autocast(torch.device("cpu"), cast):
            logits = module(x.to(dtype)).float()
        rate(module, x.to(dtype), cast, args.warmup)
        result[key] = {"rates": [], "max_abs_diff": float((logits - reference).abs().max())}
    for _ in range(args.rounds):
        for key, (module, cast, dtype) in forms.items():
            result[key]["rates"].append(rate(module, x.to(dtype), cast, args.steps))
    for key in result:
        result[key]["img_s"] = round(statistics.median(result[key]["rates"]), 1)
        result[key]["rates"] = [round(r, 1) for r in result[key]["rates"]]
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet56", "resnet20", "resnet32x4"])
    p.add_argument("--shape", default="1,32,32")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="batches per timed window")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", choices=("auto", "fp32"), default="auto")
    p.add_argument("--compile", action="store_true")
    args = p.parse_args(argv)
    args.shape = tuple(int(v) for v in args.shape.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_cpu_allocator()
    bf16 = use_bf16(args.precision, torch.device("cpu"))
    others = OtherLoad()
    out = {"batch_size": args.batch_size, "shape": list(args.shape), "threads": torch.get_num_threads(),
           "precision": "bf16" if bf16 else "fp32", "models": {}}
    for name in args.models:
        out["models"][name] = measure(name, args, bf16)
        for key, r in out["models"][name].items():
            print(f"{name:12s} {key:12s} {r['img_s']:9.1f} img/s  max |diff| {r['max_abs_diff']:.2e}  rounds "
                  f"{' / '.join(f'{v:.0f}' for v in r['rates'])}")
    out["other_cpu_cores"] = others.cores()
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
