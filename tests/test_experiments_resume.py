"""SIGKILL during a student's training, then `kdlab run` again: the experiment completes with the same table."""

import csv
import json
import signal
import subprocess
import sys
import time

from fixtures_data import make_fashion_mnist

EXPERIMENT = """
name: {name}
out_dir: {out}
dataset: {{name: fashion_mnist, root: {root}, batch_size: 16, val_ratio: 0.2}}
seeds: [0]
teachers: [{{name: cnn_tiny, label: teacher}}]
students: [{{name: cnn_tiny}}]
methods: [kd]
teacher_schedule: {{epochs: 1}}
student_schedule: {{epochs: 4}}
device: cpu
progress: false
"""
TIMING = ("train_time_s", "latency_b1_ms", "latency_b64_ms")


def _table(exp_dir):
    with open(exp_dir / "report" / "results.csv") as fh:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(fh)]


def _write(base, name):
    path = base / f"{name}.yaml"
    path.write_text(EXPERIMENT.format(name=name, out=base / "out", root=base / "data"))
    return [sys.executable, "-m", "kdlab", "run", str(path)]


def test_sigkill_during_student_then_rerun_gives_the_same_table(tmp_path):
    make_fashion_mnist(tmp_path / "data", n_train=1500, n_test=100)
    subprocess.run(_write(tmp_path, "whole"), check=True, capture_output=True)

    command = _write(tmp_path, "cut")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    runs = tmp_path / "out" / "cut" / "runs"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if any(runs.glob("student-*/checkpoints/latest.json")):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the experiment finished before it could be killed"

    again = subprocess.run(command, check=True, capture_output=True, text=True)
    assert "resuming after epoch" in again.stderr
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["runs"] == 3
    assert _table(tmp_path / "out" / "cut") == _table(tmp_path / "out" / "whole")
