"""A tiny finished experiment for the report's page tests: a teacher, a baseline and two methods over two seeds,
run through ``kdlab run`` (so its directory is what users get)."""

from __future__ import annotations

from pathlib import Path

from fixtures_data import make_fashion_mnist

TINY_REPORT = """
name: tiny-report
out_dir: {out}
dataset: {{name: fashion_mnist, root: {root}, batch_size: 32, val_ratio: 0.2}}
seeds: [0, 1]
teachers: [{{name: cnn_small}}]
students: [{{name: cnn_tiny}}]
methods: [kd, dist]
teacher_schedule: {{epochs: 1}}
student_schedule: {{epochs: 2}}
device: cpu
progress: false
"""


def make_tiny_experiment(base: Path) -> Path:
    """Run the tiny experiment under ``base``; return its directory (with report/)."""
    from kdlab.cli import main

    make_fashion_mnist(base / "data", n_train=200, n_test=60)
    path = base / "tiny.yaml"
    path.write_text(TINY_REPORT.format(out=base / "out", root=base / "data"))
    assert main(["run", str(path)]) == 0
    return base / "out" / "tiny-report"
