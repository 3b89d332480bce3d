#!/usr/bin/env python
"""Wall time of one small experiment run sequentially and with ``workers=N`` local worker processes (issue 14).

Each measurement is a fresh ``python -m kdlab run`` in a new experiment directory (so nothing is loaded from an
earlier run), timed from the outside (process start to exit: the workers' start-up, the report and the Python
start-up included) and from the inside (the driver's ``wall_time_s`` of the training part). Sequential and parallel
runs alternate, ``--repeats`` times, so a change in machine load hits both alike. The report tables of the two are
compared (val-selected and last-epoch test top-1 per row, which must agree within 0.1 point).

    .venv/bin/python benchmarks/scale_workers.py                     # 2 workers, 2 methods x 2 seeds, small runs
    .venv/bin/python benchmarks/scale_workers.py --workers 4 --train-subset 6000 --repeats 3

Data: ``--data DIR`` (the four Fashion-MNIST IDX files), else the installed Fashion-MNIST, else a generated one.
The last line of stdout is one JSON object with every measurement and the medians.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSTALLED = Path("/usr/share/datasets/fashion-mnist")

EXPERIMENT = """
name: bench
out_dir: {out}
dataset: {{name: fashion_mnist, root: {root}, batch_size: {batch}, val_ratio: 0.1,
           train_subset: {train}, test_subset: {test}}}
seeds: {seeds}
teachers: [{{name: cnn_small, label: teacher}}]
students: [{{name: cnn_tiny}}]
methods: [kd, {{name: kd, label: kd-T2, T: 2}}]
teacher_schedule: {{epochs: {teacher_epochs}}}
student_schedule: {{epochs: {epochs}}}
device: cpu
progress: false
"""


def _data(given: str | None, scratch: Path) -> Path:
    if given:
        return Path(given)
    if (INSTALLED / "train-images-idx3-ubyte.gz").is_file():
        return INSTALLED
    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures_scale import make_learnable_fashion_mnist

    return make_learnable_fashion_mnist(scratch / "data", n_train=6000, n_test=1000)


def _run(config: Path, name: str, workers: int, threads: int | None = None) -> dict:
    command = [sys.executable, "-m", "kdlab", "run", str(config), f"name={name}"]
    if workers > 1:
        command.append(f"workers={workers}")
    if threads:
        command.append(f"threads={threads}")  # (kdlab's thread policy, not OMP_NUM_THREADS, sets a run's threads)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return {"process_s": elapsed, "driver_wall_s": summary["wall_time_s"], "train_loop_s": summary["train_loop_time_s"],
            "experiment_dir": summary["experiment_dir"]}


def _table(exp_dir: str) -> dict[str, tuple[float, float]]:
    with open(Path(exp_dir) / "report" / "results.csv") as fh:
        return {r["label"]: (float(r["test_top1_selected_mean"]), float(r["test_top1_last_mean"]))
                for r in csv.DictReader(fh)}


def _difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    return max(abs(x - y) for label in a for x, y in zip(a[label], b[label]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=3000)
    parser.add_argument("--test-subset", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2, help="the students' (and baselines') epochs")
    parser.add_argument("--teacher-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", default="[0, 1]")
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default=None, help="where the experiments go (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        out.mkdir(parents=True, exist_ok=True)
        config = out / "bench.yaml"
        config.write_text(EXPERIMENT.format(out=out / "experiments", root=_data(args.data, Path(scratch)),
                                           train=args.train_subset, test=args.test_subset, seeds=args.seeds,
                                           epochs=args.epochs, teacher_epochs=args.teacher_epochs,
                                           batch=args.batch_size))
        runs: dict[str, list[dict]] = {"sequential": [], f"workers={args.workers}": []}
        for repeat in range(args.repeats):
            for label, workers in (("sequential", 1), (f"workers={args.workers}", args.workers)):
                result = _run(config, f"{label.replace('=', '')}-{repeat}", workers)
                runs[label].append(result)
                print(f"{label:>12}  run {repeat + 1}: {result['process_s']:6.1f} s process, "
                      f"{result['driver_wall_s']:6.1f} s driver wall, "
                      f"{result['train_loop_s']:6.1f} s in training loops", flush=True)
        share = max(1, len(os.sched_getaffinity(0)) // args.workers)  # what each worker gets
        same = _run(config, "sequential-same-threads", 1, threads=share)
        print(f"sequential with the workers' {share} thread(s): {same['process_s']:.1f} s process", flush=True)
        reference = _table(runs["sequential"][0]["experiment_dir"])
        parallel = _table(runs[f"workers={args.workers}"][0]["experiment_dir"])
        worst = _difference(reference, parallel)
        worst_same = _difference(_table(same["experiment_dir"]), parallel)
    medians = {label: {k: statistics.median(r[k] for r in rs) for k in ("process_s", "driver_wall_s", "train_loop_s")}
               for label, rs in runs.items()}
    best = {label: {k: min(r[k] for r in rs) for k in ("process_s", "driver_wall_s", "train_loop_s")}
            for label, rs in runs.items()}  # the least disturbed run of each, on a shared machine
    seq, par = medians["sequential"]["process_s"], medians[f"workers={args.workers}"]["process_s"]
    print(f"best process wall: sequential {best['sequential']['process_s']:.1f} s, workers={args.workers} "
          f"{best[f'workers={args.workers}']['process_s']:.1f} s")
    dseq, dpar = medians["sequential"]["driver_wall_s"], medians[f"workers={args.workers}"]["driver_wall_s"]
    print(f"median driver wall (the runs): sequential {dseq:.1f} s, workers={args.workers} {dpar:.1f} s "
          f"(speed-up {dseq / dpar:.2f}x)")
    print(f"median process wall: sequential {seq:.1f} s, workers={args.workers} {par:.1f} s "
          f"(speed-up {seq / par:.2f}x); "
          f"largest table difference {worst:.3f} points ({worst_same:.3f} against the sequential run with the "
          f"workers' thread count: oneDNN's float sums depend on the thread count, and a short schedule can "
          f"amplify that)")
    summary = {"workers": args.workers, "train_subset": args.train_subset, "epochs": args.epochs,
               "teacher_epochs": args.teacher_epochs, "batch_size": args.batch_size, "seeds": args.seeds,
               "cpu_count": os.cpu_count(), "medians": medians, "best": best, "speedup": seq / par,
               "driver_speedup": dseq / dpar, "max_table_diff": worst,
               "max_table_diff_same_threads": worst_same, "threads_per_worker": share,
               "runs": {k: [{x: y for x, y in r.items() if x != "experiment_dir"} for r in v] for k, v in runs.items()}}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
