#!/usr/bin/env python
"""KD throughput: how fast does distillation train, against what the hardware allows? (project issue 6)

For one teacher/student pair, one input shape and ONE batch size per invocation, on random synthetic data (fixed
seed), this measures images/second of four workloads, all through kdlab's own code:

    student_img_s    the student trained alone: build_method("ce") + SGD + kdlab.engine.trainer.train_step
    teacher_img_s    the teacher's inference alone: eval(), no_grad, kdlab's autocast, channels_last as configured
    online_kd_img_s  build_method("kd") with no given teacher logits: the teacher runs inside every training step
    shared_kd_img_s  build_method("kd") with precomputed teacher logits (stored fp16, one tensor per batch)

and two ratios:

    online_fraction_of_limit   = online_kd / (1 / (1/student + 1/teacher))   (1.0: a KD step costs exactly one
                                 student step plus one teacher forward; below 0.9 something is wasted)
    shared_fraction_of_student = shared_kd / student                         (the cost of the KD loss itself)

Every training workload calls ``train_step`` — the per-batch step the Trainer uses — followed by the scheduler step,
on an objective moved to the device and memory format exactly as ``Trainer.__init__`` does. The four workloads are
timed in interleaved rounds (warm-up first, then ``--windows`` rounds; in each round every workload runs ``--steps``
batches, by default as many as take about ``--window-s`` seconds; the reported rate is the median over rounds), so
that a change in machine load hits every workload alike. On CUDA the clock is read after ``torch.cuda.synchronize()``.

    .venv/bin/python benchmarks/kd_throughput.py                       # resnet56 -> resnet20, 1x32x32, batch 64
    .venv/bin/python benchmarks/kd_throughput.py --batch-size 256 --precision fp32
    .venv/bin/python benchmarks/kd_throughput.py --teacher resnet32x4 --student resnet8x4 --shape 3,32,32

A readable table goes to stdout, and the LAST line of stdout is one JSON object (see ``main``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

try:
    import kdlab  # noqa: F401
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kdlab.batch import Batch  # noqa: E402
from kdlab.config import OptimConfig  # noqa: E402
from kdlab.engine.device import autocast, resolve_device, use_bf16  # noqa: E402
from kdlab.engine.host import OtherLoad, ThreadPolicy, tune_cpu_allocator  # noqa: E402
from kdlab.engine.optim import build_optimizer, build_scheduler  # noqa: E402
from kdlab.engine.trainer import EngineOptions, train_step  # noqa: E402
from kdlab.errors import ConfigError  # noqa: E402
from kdlab.methods import build_method  # noqa: E402
from kdlab.models import create_model  # noqa: E402

WORKLOADS = {  # JSON key -> label in the table
    "student_img_s": "student training (ce)",
    "teacher_img_s": "teacher inference",
    "online_kd_img_s": "online KD (teacher in step)",
    "shared_kd_img_s": "shared KD (stored logits)",
}
N_BATCHES = 4  # distinct synthetic batches, cycled


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--teacher", default="resnet56", help="registered model name of the teacher")
    p.add_argument("--student", default="resnet20", help="registered model name of the student")
    p.add_argument("--shape", default="1,32,32", help="input shape C,H,W (1,32,32: Fashion-MNIST padded to 32x32)")
    p.add_argument("--classes", type=int, default=10, help="number of classes")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (one per invocation)")
    p.add_argument("--steps", type=int, default=None,
                   help="batches per timed window and workload (default: as many as last about --window-s seconds "
                        "at the best rate seen so far; such a window is cut short after 3x --window-s)")
    p.add_argument("--window-s", type=float, default=2.0, help="target length of one timed window when --steps "
                                                                "is not given")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed batches per workload before timing (default: 3 on CPU, 20 on CUDA; "
                        "+10 with --compile)")
    p.add_argument("--windows", type=int, default=7, help="timed rounds; the median round is reported")
    p.add_argument("--max-s", type=float, default=200.0,
                   help="time budget of the timed rounds: no new round starts after it (at least one round runs)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="as the config key: auto = bf16 where the device has fast bf16")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="models and inputs in channels_last, as the trainer does")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: CUDA when present)")
    p.add_argument("--threads", type=int, default=None,
                   help="pin torch's threads (default: kdlab's load-adaptive choice before each round, as the "
                        "trainer makes it each epoch with threads=auto: the cores other processes leave free; see "
                        "kdlab/engine/host.py)")
    p.add_argument("--contend", action="store_true",
                   help="time every workload again while one other CPU-bound process runs, and report each as a "
                        "fraction of its idle rate")
    p.add_argument("--contend-nice", type=int, default=0, help="nice level of the contending process")
    p.add_argument("--compile", action="store_true", help="torch.compile the objective and the teacher")
    p.add_argument("--seed", type=int, default=0, help="seed of the models' init and of the synthetic data")
    p.add_argument("--system-allocator", action="store_true",
                   help="leave glibc's malloc thresholds dynamic (the trainer fixes them on the CPU, see "
                        "kdlab/engine/host.py); for measuring what that tuning is worth")
    args = p.parse_args(argv)
    try:
        shape = tuple(int(x) for x in args.shape.split(","))
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError
        args.shape = shape
    except ValueError:
        p.error(f"--shape must be C,H,W with three positive integers, got {args.shape!r}")
    for name in ("batch_size", "classes", "windows"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


# -- timing -----------------------------------------------------------------------------------------------------------
def _minor_faults() -> int | None:
    try:
        import resource
    except ImportError:  # not on Unix
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Workload:
    """``step(i)`` runs batch ``i``; ``run(n)`` times ``n`` consecutive steps and returns images/second."""

    def __init__(self, key: str, step: Callable[[int], None], batch_size: int, device: torch.device) -> None:
        self.key, self.step, self.batch_size, self.device = key, step, batch_size, device
        self.index = 0
        self.steps = 0  # batches timed in the rounds, all together
        self.best = 0.0
        self.faults: list[float] = []  # minor page faults per step, per window (memory handed back to the OS and
        # faulted in again: a CPU allocator cost that grows with the step's peak memory)
        self.rates: list[float] = []

    def run(self, n: int, max_s: float | None = None) -> float:
        """Images/second over ``n`` steps, or over fewer when ``max_s`` seconds have passed (a machine gone busy)."""
        _sync(self.device)
        faults = _minor_faults()
        start = time.perf_counter()
        done = 0
        while done < n:
            self.step(self.index)
            self.index += 1
            done += 1
            if max_s is not None and time.perf_counter() - start > max_s:
                break
        _sync(self.device)
        elapsed = time.perf_counter() - start
        self.last_steps = done
        if faults is not None:
            self.faults.append((_minor_faults() - faults) / done)
        return done * self.batch_size / max(elapsed, 1e-9)


# -- the workloads ----------------------------------------------------------------------------------------------------
def _model(name: str, args, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(name, num_classes=args.classes, in_channels=args.shape[0])


def _trainer_input(images: torch.Tensor, opt: EngineOptions) -> torch.Tensor:
    """What Trainer._train_epoch does to each loader batch before train_step."""
    return images.contiguous(memory_format=torch.channels_last) if opt.channels_last else images


def training_workload(key: str, method: str, student: torch.nn.Module, teacher: torch.nn.Module | None,
                      batches: list, opt: EngineOptions, total_steps: int,
                      stored_logits: list[torch.Tensor] | None = None) -> tuple[Workload, dict]:
    """A training step exactly as the Trainer runs it: method set up as in Trainer.__init__, then train_step."""
    objective = build_method(method, {}, student, teacher)
    memory_format = torch.channels_last if opt.channels_last else torch.contiguous_format
    objective.to(device=opt.device, memory_format=memory_format)
    objective.prepare(batches[0][0][:2])  # what the runner does before the optimizer (a no-op for ce/kd)
    optimizer = build_optimizer(objective.trainable_parameters(), opt.optim)
    scheduler = build_scheduler(optimizer, opt.optim, total_steps, 1)
    step_fn = torch.compile(objective) if opt.compile else objective
    objective.train()
    last: dict = {}

    def step(i: int) -> None:
        images, labels = batches[i % len(batches)]
        # the trainer's teacher cache puts a stored tensor in the batch; the method converts it (.float())
        given = stored_logits[i % len(batches)].to(opt.device, non_blocking=True) if stored_logits else None
        batch = Batch(_trainer_input(images, opt), labels, teacher_logits=given)
        out, loss, _ = train_step(step_fn, optimizer, batch, opt, objective.trainable_parameters)
        scheduler.step()
        last["loss"] = loss.detach()

    return Workload(key, step, len(batches[0][1]), opt.device), last


def teacher_workload(teacher: torch.nn.Module, batches: list, opt: EngineOptions) -> Workload:
    teacher.eval()
    forward = torch.compile(teacher) if opt.compile else teacher

    def step(i: int) -> None:
        images = _trainer_input(batches[i % len(batches)][0], opt)
        with torch.no_grad(), autocast(opt.device, opt.bf16):
            forward(images)

    return Workload("teacher_img_s", step, len(batches[0][1]), opt.device)


# -- main -------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print the table, then the result as one JSON line (also returned).

    JSON keys: student_img_s, teacher_img_s, online_kd_img_s, shared_kd_img_s (medians over the timed rounds),
    online_limit_img_s, online_fraction_of_limit, shared_fraction_of_student, windows (every round's rates),
    online_fraction_of_limit_rounds (the fraction within each round), best_img_s (the fastest round of each workload),
    online_fraction_of_limit_best / shared_fraction_of_student_best (the same ratios of the best rates), device,
    batch_size, teacher, student, shape, classes, precision (the resolved one: bf16 or fp32), channels_last, compile,
    threads, cpu_count, malloc_env (the MALLOC_* / LD_PRELOAD allocator settings in effect), torch, steps (timed
    batches per workload), minor_faults_per_step (median over the rounds: page faults of memory the allocator gave
    back to the OS, on Unix), warmup, rounds, loadavg_start / loadavg_end (the 1-minute load average, this process
    included), other_cpu_cores / other_cpu_cores_rounds (cores that OTHER processes kept busy meanwhile, over the run
    and per round, Linux only: the noise indicator), elapsed_s, final_losses.
    """
    args = parse_args(argv)
    started = time.perf_counter()
    load_start = _loadavg()
    others = OtherLoad()
    device = resolve_device(args.device)
    bf16 = use_bf16(args.precision, device)
    # what Trainer.__init__ does on the CPU
    if device.type != "cpu":
        allocator = f"not tuned ({device.type})"
    else:
        allocator = "not tuned (--system-allocator)" if args.system_allocator else tune_cpu_allocator()
    warmup = args.warmup
    if warmup is None:
        warmup = (20 if device.type == "cuda" else 3) + (10 if args.compile else 0)
    opt = EngineOptions(epochs=1, optim=OptimConfig(), device=device, bf16=bf16, channels_last=args.channels_last,
                        compile=args.compile)
    total_steps = 10_000  # length of the cosine schedule: the lr stays near its peak, as early in a real run

    # synthetic data generated on the device from a fixed seed: float32 NCHW images (as the loader yields), int64 labels
    gen = torch.Generator(device=device).manual_seed(args.seed)
    batches = [(torch.randn((args.batch_size, *args.shape), generator=gen, device=device),
                torch.randint(0, args.classes, (args.batch_size,), generator=gen, device=device))
               for _ in range(N_BATCHES)]

    teacher = _model(args.teacher, args, args.seed + 1)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    teacher.to(device=device, memory_format=memory_format).requires_grad_(False).eval()
    # stored teacher logits, as a logits cache would hold them: fp16, one tensor per batch, computed by the teacher
    with torch.no_grad(), autocast(device, bf16):
        stored = [teacher(_trainer_input(images, opt)).to(torch.float16) for images, _ in batches]

    student_w, student_last = training_workload("student_img_s", "ce", _model(args.student, args, args.seed), None,
                                                batches, opt, total_steps)
    online_w, online_last = training_workload("online_kd_img_s", "kd", _model(args.student, args, args.seed), teacher,
                                              batches, opt, total_steps)
    shared_w, shared_last = training_workload("shared_kd_img_s", "kd", _model(args.student, args, args.seed), teacher,
                                              batches, opt, total_steps, stored_logits=stored)
    workloads = [student_w, teacher_workload(teacher, batches, opt), online_w, shared_w]

    for w in workloads:  # warm-up: oneDNN primitive caches, allocator, autotuning, compilation
        w.run(warmup)
    for w in workloads:  # a first estimate of the rate, for the window length
        w.best = w.run(2)
        w.faults.clear()
    # threads=auto (not kdlab's pinned default): the adaptive choice, made before every round as the trainer per epoch
    policy = ThreadPolicy(args.threads or "auto")
    round_others, round_threads = timed_rounds(workloads, args, policy)
    idle_others, idle_threads = others.cores(), torch.get_num_threads()  # before the contender starts
    contended = contended_rates(workloads, args, policy) if args.contend else None

    rates = {w.key: statistics.median(w.rates) for w in workloads}
    limit = 1.0 / (1.0 / rates["student_img_s"] + 1.0 / rates["teacher_img_s"])
    best = {w.key: max(w.rates) for w in workloads}  # noise on a shared machine only ever slows a window down
    best_limit = 1.0 / (1.0 / best["student_img_s"] + 1.0 / best["teacher_img_s"])
    per_round = [o / (1.0 / (1.0 / s + 1.0 / t))
                 for s, t, o in zip(student_w.rates, workloads[1].rates, online_w.rates)]
    losses = {name: float(last["loss"]) for name, last in
              (("student", student_last), ("online_kd", online_last), ("shared_kd", shared_last))}
    result = {
        **{k: round(v, 1) for k, v in rates.items()},
        "online_limit_img_s": round(limit, 1),
        "online_fraction_of_limit": round(rates["online_kd_img_s"] / limit, 3),
        "shared_fraction_of_student": round(rates["shared_kd_img_s"] / rates["student_img_s"], 3),
        "online_fraction_of_limit_rounds": [round(f, 3) for f in per_round],
        "best_img_s": {k: round(v, 1) for k, v in best.items()},
        "online_fraction_of_limit_best": round(best["online_kd_img_s"] / best_limit, 3),
        "shared_fraction_of_student_best": round(best["shared_kd_img_s"] / best["student_img_s"], 3),
        "windows": {w.key: [round(r, 1) for r in w.rates] for w in workloads},
        "minor_faults_per_step": {w.key: round(statistics.median(w.faults)) for w in workloads if w.faults},
        "device": str(device) if device.type != "cuda" else f"cuda ({torch.cuda.get_device_name(device)})",
        "batch_size": args.batch_size,
        "teacher": args.teacher,
        "student": args.student,
        "shape": list(args.shape),
        "classes": args.classes,
        "precision": "bf16" if bf16 else "fp32",
        "channels_last": args.channels_last,
        "compile": args.compile,
        "threads": idle_threads,
        "cpu_count": os.cpu_count(),
        "allocator": allocator,
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "LD_PRELOAD"},
        "torch": torch.__version__,
        "steps": {w.key: w.steps for w in workloads},
        "warmup": warmup,
        "rounds": len(student_w.rates),
        "loadavg_start": load_start,
        "loadavg_end": _loadavg(),
        "other_cpu_cores": None if idle_others is None else round(idle_others, 2),
        "other_cpu_cores_rounds": [None if x is None else round(x, 2) for x in round_others],
        "threads_rounds": round_threads,
        **(contended or {}),
        "elapsed_s": round(time.perf_counter() - started, 1),
        "final_losses": {k: round(v, 4) for k, v in losses.items()},
    }
    _print_table(result)
    print(json.dumps(result), flush=True)
    return result


def timed_rounds(workloads: list, args: argparse.Namespace, policy: ThreadPolicy) -> tuple[list, list]:
    """Interleaved rounds (a load change hits every workload alike); each workload's rates go to ``w.rates``.
    Returns the cores other processes kept busy and the threads used, per round."""
    cap = None if args.steps else 3 * args.window_s  # bounds the run time when the machine turns busy mid-run
    rounds_start = time.perf_counter()
    round_others: list[float | None] = []
    round_threads: list[int] = []
    for r in range(args.windows):
        if r and time.perf_counter() - rounds_start > args.max_s:
            print(f"warning: --max-s {args.max_s:g} s spent after {r} of {args.windows} rounds; reporting those",
                  file=sys.stderr)
            break
        round_threads.append(policy.apply() if args.device != "cuda" else torch.get_num_threads())
        round_load = OtherLoad()
        for w in workloads:
            # fixed, or as many batches as last about --window-s at the best rate seen so far (a busy moment during
            # the estimate does not shrink the windows for good)
            n = args.steps or max(3, min(10_000, round(args.window_s * w.best / args.batch_size)))
            w.rates.append(w.run(n, cap))
            w.best = max(w.best, w.rates[-1])
            w.steps += w.last_steps
        round_others.append(round_load.cores())
    return round_others, round_threads


def contended_rates(workloads: list, args: argparse.Namespace, policy: ThreadPolicy) -> dict:
    """The same rounds again while one other CPU-bound process (a busy Python loop) runs: median img/s per workload,
    as a fraction of the idle median, the threads kdlab chose and the cores the contender took."""
    idle = {w.key: statistics.median(w.rates) for w in workloads}
    saved = {w.key: (w.rates, w.steps) for w in workloads}
    for w in workloads:
        w.rates, w.steps = [], 0
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                            preexec_fn=(lambda: os.nice(args.contend_nice)) if args.contend_nice else None)
    try:
        time.sleep(1.0)  # the contender is running before kdlab's first thread decision
        others, threads = timed_rounds(workloads, args, policy)
    finally:
        busy.kill()
        busy.wait()
    rates = {w.key: statistics.median(w.rates) for w in workloads}
    out = {"contended_img_s": {k: round(v, 1) for k, v in rates.items()},
           "contended_fraction_of_idle": {k: round(rates[k] / idle[k], 3) for k in rates},
           "contended_windows": {w.key: [round(r, 1) for r in w.rates] for w in workloads},
           "contended_threads_rounds": threads, "contended_other_cpu_cores_rounds": [
               None if x is None else round(x, 2) for x in others], "contender_nice": args.contend_nice}
    for w in workloads:
        w.rates, w.steps = saved[w.key]
    return out


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _print_table(r: dict) -> None:
    c, h, w = r["shape"]
    print(f"kd_throughput: {r['teacher']} -> {r['student']}, {c}x{h}x{w}, {r['classes']} classes, "
          f"batch {r['batch_size']}, {r['device']} {r['precision']}"
          f"{' channels_last' if r['channels_last'] else ''}{' compile' if r['compile'] else ''}, "
          f"{r['threads']} threads, torch {r['torch']}")
    other = r["other_cpu_cores"]
    print(f"median of {r['rounds']} interleaved rounds (after {r['warmup']} warm-up batches); other processes kept "
          f"{'?' if other is None else f'{other:.2f}'} of {r['cpu_count']} cores busy meanwhile")
    faults = r["minor_faults_per_step"]
    print(f"{'workload':<30}{'img/s':>9}{'best':>9}{'batches':>9}{'faults/step':>13}   every round")
    for key, label in WORKLOADS.items():
        rounds = " / ".join(f"{x:.0f}" for x in r["windows"][key])
        print(f"{label:<30}{r[key]:>9.1f}{r['best_img_s'][key]:>9.1f}{r['steps'][key]:>9}"
              f"{faults.get(key, float('nan')):>13.0f}   {rounds}")
    print(f"{'limit 1/(1/student+1/teacher)':<30}{r['online_limit_img_s']:>9.1f}")
    print(f"online_fraction_of_limit   {r['online_fraction_of_limit']:.3f}  (of the best rates: "
          f"{r['online_fraction_of_limit_best']:.3f}; per round: "
          f"{', '.join(f'{f:.2f}' for f in r['online_fraction_of_limit_rounds'])})")
    print(f"shared_fraction_of_student {r['shared_fraction_of_student']:.3f}  (of the best rates: "
          f"{r['shared_fraction_of_student_best']:.3f})")
    per_round = r["other_cpu_cores_rounds"]
    if any(x is not None for x in per_round):
        shown = " / ".join("?" if x is None else f"{x:.2f}" for x in per_round)
        print(f"other processes' CPU use per round (cores): {shown}")
    if r["device"] == "cpu" and max((x for x in per_round if x is not None), default=0.0) > 0.2:
        print("warning: other processes used the CPU during timed rounds: timings are noisy (with as many threads as "
              "cores, even one busy process slows every step many times over); trust the quiet rounds, or re-run "
              "when the machine is idle or with --threads 1")
    if "contended_img_s" in r:
        print(f"with one other CPU-bound process (nice {r['contender_nice']}); kdlab's threads per round: "
              f"{r['contended_threads_rounds']}")
        for key, label in WORKLOADS.items():
            rounds = " / ".join(f"{x:.0f}" for x in r["contended_windows"][key])
            print(f"{label:<30}{r['contended_img_s'][key]:>9.1f}   {r['contended_fraction_of_idle'][key]:.2f} of "
                  f"idle   {rounds}")
    if not all(v == v and abs(v) != float("inf") for v in r["final_losses"].values()):
        print(f"warning: non-finite training loss {r['final_losses']} (timings of NaN arithmetic may differ)")
    print(f"elapsed {r['elapsed_s']:.1f} s")


if __name__ == "__main__":
    try:
        main()
    except ConfigError as exc:  # e.g. --device cuda without CUDA, --precision bf16 where unsupported, a bad model name
        sys.exit(f"error: {exc}")
