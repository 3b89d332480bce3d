"""SIGKILL of the driver or of a worker during `kdlab run workers=2`, then the same command again: the experiment
completes with the uninterrupted run's table; a killed driver leaves no worker training."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures_scale import make_learnable_fashion_mnist
from kdlab.cli import main

EXPERIMENT = """
name: base
out_dir: {out}
dataset: {{name: fashion_mnist, root: {root}, batch_size: 16, val_ratio: 0.2}}
seeds: [0, 1]
teachers: [{{name: cnn_tiny, label: teacher}}]
students: [{{name: cnn_tiny}}]
methods: [kd, {{name: kd, label: kd-T2, T: 2}}]
teacher_schedule: {{epochs: 1}}
student_schedule: {{epochs: 3}}
device: cpu
progress: false
cpus_per_worker: 1
"""
ACCURACY = ("test_top1_last_mean", "test_top1_selected_mean", "test_nll_mean")


def _table(exp_dir):
    with open(exp_dir / "report" / "results.csv") as fh:
        return {row["label"]: {k: float(row[k]) for k in ACCURACY} for row in csv.DictReader(fh)}


def _same(a, b):
    assert a.keys() == b.keys()
    for label in a:
        assert a[label] == pytest.approx(b[label], abs=0.1), label


def _processes() -> dict[int, tuple[int, bytes]]:
    """pid -> (parent pid, command line) of every process."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            found[int(stat.parent.name)] = (int(fields[1]), (stat.parent / "cmdline").read_bytes())
        except (OSError, ValueError):
            continue
    return found


def _servers(pid, processes=None):
    """The driver's fork server (its workers' parent)."""
    processes = processes or _processes()
    return [p for p, (parent, cmdline) in processes.items() if parent == pid and b"forkserver" in cmdline]


def _children(pid):
    """Worker processes of the driver ``pid``: forked from its fork server (or, spawned, its own children)."""
    processes = _processes()
    servers = set(_servers(pid, processes))
    return [p for p, (parent, cmdline) in processes.items()
            if parent in servers or (parent == pid and b"spawn_main" in cmdline)]


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("kill")
    make_learnable_fashion_mnist(base / "data", n_train=1200, n_test=200)
    path = base / "exp.yaml"
    path.write_text(EXPERIMENT.format(out=base / "out", root=base / "data"))
    # threads=1: the workers' share (cpus_per_worker: 1); CPU float sums depend on the thread count
    assert main(["run", str(path), "name=whole", "threads=1"]) == 0
    return base, path, _table(base / "out" / "whole")


def _start(path, name):
    command = [sys.executable, "-m", "kdlab", "run", str(path), f"name={name}", "workers=2"]
    return command, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_student_checkpoint(proc, runs, deadline=240):
    end = time.time() + deadline
    while time.time() < end and proc.poll() is None:
        if any(runs.glob("student-*/checkpoints/latest.json")):
            return
        time.sleep(0.02)
    pytest.fail("the experiment ended before a student had a checkpoint")


def test_sigkill_of_the_driver_then_rerun_completes_with_the_same_table(reference):
    base, path, expected = reference
    command, proc = _start(path, "cut")
    _wait_for_student_checkpoint(proc, base / "out" / "cut" / "runs")
    workers = _children(proc.pid) + _servers(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL and workers
    end = time.time() + 20
    while any(_alive(p) for p in workers) and time.time() < end:
        time.sleep(0.05)
    assert not any(_alive(p) for p in workers), "a worker (or the fork server) outlived the driver"
    assert not (base / "out" / "cut" / "summary.json").exists()

    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming after epoch" in again.stderr
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["runs"] == 7 and summary["failed"] == []
    _same(_table(base / "out" / "cut"), expected)


def test_sigkill_of_a_worker_fails_its_run_only_and_a_rerun_retries_it(reference):
    base, path, expected = reference
    command, proc = _start(path, "worker")
    _wait_for_student_checkpoint(proc, base / "out" / "worker" / "runs")
    for pid in _children(proc.pid):
        os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 2, err.decode()[-2000:]
    # (the lines after it may be multiprocessing's resource tracker noting the killed worker's tqdm lock)
    last = next(line for line in err.decode().splitlines() if line.startswith("kdlab: error: "))
    assert "runs failed" in last and "died (killed by SIGKILL) while it ran" in last
    manifest = json.loads((base / "out" / "worker" / "manifest.json").read_text())
    finished = [r for r in manifest["runs"] if (base / "out" / "worker" / r["run_dir"] / "result.json").is_file()]
    failed = int(last.split("kdlab: error: ")[1].split(" of ")[0])
    assert 1 <= failed <= 2 and len(finished) == 7 - failed  # only the runs the killed workers were in failed

    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout.strip().splitlines()[-1])["failed"] == []
    _same(_table(base / "out" / "worker"), expected)
