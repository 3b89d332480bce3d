"""One run over two processes: `torchrun --nproc_per_node=2 -m kdlab train` on the CPU (Gloo) matches the single
process at the same global batch, resumes after a SIGKILL, and `kdlab run ddp=2` runs an experiment's runs so."""

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

TESTS = Path(__file__).resolve().parent
TIMING = ("img_s", "time_s", "run_dir")


def _train_args(root, out, name):
    return ["train", "model=fixtures_scale:TinyMLP", f"dataset.root={root}", "epochs=4", "dataset.batch_size=32",
            "optim.warmup_epochs=0.5", f"out_dir={out}", f"name={name}", "progress=false", "device=cpu",
            "precision=fp32"]  # the comparison is of the data and gradient paths: bf16 rounds per rank


def _torchrun(args, **popen):
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(TESTS.parent / "src"), str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "KDLAB_NO_PROGRESS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "kdlab",
               *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **popen)


def _children(pid):
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _comparable(row):
    return {k: v for k, v in row.items() if not k.endswith(TIMING)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    root = make_learnable_fashion_mnist(base / "data", n_train=3000, n_test=300)
    proc = _torchrun(_train_args(root, base / "runs", "ddp"))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    lines = out.strip().splitlines()
    assert len(lines) == 1, "only rank 0 prints the result"
    return base, root, json.loads(lines[0])


def test_torchrun_two_ranks_match_one_process_at_the_same_global_batch(runs, capsys):
    base, root, ddp = runs
    capsys.readouterr()
    assert main(_train_args(root, base / "runs", "single")) == 0
    single = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ddp["optimizer_steps"] == single["optimizer_steps"] == 4 * (2700 // 32)  # val_ratio 0.1 holds out 300
    assert (ddp["world_size"], ddp["global_batch"], ddp["per_rank_batch"]) == (2, 32, 16)
    assert (single["world_size"], single["global_batch"]) == (1, 32)
    assert ddp["test_top1"] > 30  # learned something
    assert abs(ddp["test_top1"] - single["test_top1"]) <= 0.5
    assert abs(ddp["selected_test_top1"] - single["selected_test_top1"]) <= 0.5
    assert ddp["test_loss"] == pytest.approx(single["test_loss"], abs=1e-3)
    meta = json.loads((base / "runs" / "ddp" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["lr_scaling"] == "none" and meta["lr_effective"] == 0.1
    history = [json.loads(line) for line in (base / "runs" / "ddp" / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (base / "runs" / "single" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(history, reference):  # the union of the ranks is the single-process epoch
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-3)
        assert a["val_top1"] == pytest.approx(b["val_top1"], abs=0.5)


def test_ddp_resumes_exactly_after_sigkill(runs):
    base, root, expected = runs
    proc = _torchrun(_train_args(root, base / "runs", "cut"))
    pointer = base / "runs" / "cut" / "checkpoints" / "latest.json"
    deadline = time.time() + 180
    while not pointer.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    for pid in [*_children(proc.pid), proc.pid]:  # both ranks (torchrun starts them in sessions of their own), then it
        os.kill(pid, signal.SIGKILL)
    proc.communicate()
    assert not (base / "runs" / "cut" / "result.json").exists(), "the run finished before it could be killed"
    again = _torchrun(_train_args(root, base / "runs", "cut"))
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    assert "resuming" in err
    assert _comparable(json.loads(out.strip().splitlines()[-1])) == _comparable(expected)


EXPERIMENT = """
name: base
out_dir: {out}
dataset: {{name: fashion_mnist, root: {root}, batch_size: 32, val_ratio: 0.2, train_subset: 1200}}
seeds: [0]
teachers: [{{name: "fixtures_scale:TinyMLP", label: teacher}}]
students: [{{name: "fixtures_scale:TinyMLP", label: student}}]
methods: [kd]
teacher_schedule: {{epochs: 2}}
student_schedule: {{epochs: 1}}
device: cpu
precision: fp32
progress: false
"""


def test_an_experiment_with_ddp_2_gives_the_single_process_table(runs, capsys):
    base, root, _ = runs
    path = base / "exp.yaml"
    path.write_text(EXPERIMENT.format(out=base / "out", root=root))
    assert main(["run", str(path), "name=one"]) == 0
    capsys.readouterr()
    assert main(["run", str(path), "name=two", "ddp=2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["failed"] == [] and summary["teacher_cache"]["computed_batches"] > 0
    tables = []
    for name in ("one", "two"):
        with open(base / "out" / name / "report" / "results.csv") as fh:
            tables.append({r["label"]: float(r["test_top1_selected_mean"]) for r in csv.DictReader(fh)})
    assert tables[0].keys() == tables[1].keys() and len(tables[0]) == 3
    for label, value in tables[0].items():
        assert abs(tables[1][label] - value) <= 0.5, label
    result = json.loads(next((base / "out" / "two" / "runs").glob("student-*/result.json")).read_text())
    assert result["world_size"] == 2 and result["per_rank_batch"] == 16
    assert "over 2 process(es)" in (base / "out" / "two" / "report" / "results.md").read_text()
