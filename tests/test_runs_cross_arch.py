"""Cross-architecture distillation at tiny sizes: a ViT teacher into a CNN (kd, ofa), a CNN teacher into a distilled
DeiT through its distillation token (deit), a teacher trained at twice the student's resolution (its view resizes);
from the API, the CLI and an experiment file (the FMNIST-sized DeiT recipe shipped in configs/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import kdlab
from kdlab.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _data(root, **extra) -> dict:
    return {"name": "fashion_mnist", "root": str(root), "batch_size": 50, **extra}


def _common(tmp_path) -> dict:
    return {"epochs": 1, "out_dir": str(tmp_path), "device": "cpu", "progress": False}


@pytest.fixture(scope="module")
def vit_teacher(tmp_path_factory, fmnist):
    out = tmp_path_factory.mktemp("vit")
    return kdlab.train({"name": "vit_nano_patch4_32", "img_size": 28}, _data(fmnist), name="vit", epochs=1,
                       out_dir=str(out), device="cpu", progress=False)


@pytest.mark.parametrize("method", ["kd", "ofa"])
def test_a_vit_teacher_distils_into_a_cnn(tmp_path, fmnist, vit_teacher, method):
    student = kdlab.distill("cnn_tiny", vit_teacher, method, _data(fmnist), **_common(tmp_path))
    assert student.metrics["epochs"] == 1 and 0 <= student.metrics["test_top1"] <= 100


def test_a_cnn_teacher_distils_into_a_deit_through_its_distillation_token(tmp_path, fmnist):
    teacher = kdlab.train("cnn_tiny", _data(fmnist), name="cnn", **_common(tmp_path))
    student = kdlab.distill({"name": "deit_nano_distilled_patch4_32", "img_size": 28}, teacher, "deit",
                            _data(fmnist), **_common(tmp_path))
    assert "loss_deit" in json.dumps(student.history)  # the distillation token's term was trained


def test_a_teacher_at_twice_the_resolution_sees_its_own_view(tmp_path, fmnist, capsys):
    teacher = kdlab.train("cnn_tiny", _data(fmnist, image_size=56), name="t56", **_common(tmp_path))
    meta = json.loads((teacher.run_dir / "meta.json").read_text())
    assert meta["input"]["size"] == [56, 56]
    api = kdlab.distill("cnn_tiny", teacher, "kd", _data(fmnist), name="api", **_common(tmp_path))
    assert api.metrics["epochs"] == 1
    capsys.readouterr()
    assert main(["distill", f"teacher={teacher.run_dir}", "student=cnn_tiny", "method=kd", f"dataset.root={fmnist}",
                 "dataset.batch_size=50", "epochs=1", f"out_dir={tmp_path}", "name=cli", "progress=false",
                 "device=cpu"]) == 0
    out = capsys.readouterr()
    assert "1x28x28" in out.err and "-> 1x56x56" in out.err  # the teacher's own view: 28 px -> 56 px
    assert json.loads(out.out.strip().splitlines()[-1])["epochs"] == 1


def test_a_vit_teacher_into_a_cnn_from_the_cli(tmp_path, fmnist, vit_teacher, capsys):
    assert main(["distill", f"teacher={vit_teacher.run_dir}", "student=cnn_tiny", "method=ofa",
                 f"dataset.root={fmnist}", "dataset.batch_size=50", "epochs=1", f"out_dir={tmp_path}",
                 "progress=false", "device=cpu"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epochs"] == 1


def test_the_shipped_deit_recipe_runs_at_test_size(tmp_path, fmnist):
    from kdlab.experiments.config import load_experiment_file
    from kdlab.scale import run_experiment

    exp = load_experiment_file(CONFIGS / "fmnist_deit_cross_arch.yaml",
                               [f"dataset.root={fmnist}", f"out_dir={tmp_path}", "device=cpu", "progress=false",
                                "dataset.train_subset=null", "dataset.test_subset=null"])
    summary = run_experiment(exp)
    assert not summary["failed"]
    rows = json.loads((exp.directory / "manifest.json").read_text())["runs"]
    students = [r for r in rows if r["role"] == "student"]
    assert {r["teacher"] for r in students} == {"cnn-a", "cnn-b", "ens(cnn-a+cnn-b)"}
    assert all((exp.directory / r["run_dir"] / "result.json").is_file() for r in students)


def test_a_vit_teacher_into_a_cnn_from_an_experiment_file(tmp_path, fmnist):
    from kdlab.experiments.config import load_experiment_file
    from kdlab.scale import run_experiment

    path = tmp_path / "vit.yaml"
    path.write_text(f"""name: vit-cnn
out_dir: {tmp_path}
dataset: {{name: fashion_mnist, root: {fmnist}, batch_size: 50}}
seeds: [0]
teachers: [{{name: vit_nano_patch4_32, label: vit, img_size: 28}}]
students: [{{name: cnn_tiny}}]
methods: [kd, ofa]
teacher_schedule: {{epochs: 1, optim: {{name: adamw, lr: 1.0e-3, weight_decay: 0.05}}}}
student_schedule: {{epochs: 1}}
device: cpu
progress: false
""")
    summary = run_experiment(load_experiment_file(path))
    assert not summary["failed"] and summary["runs"] == 4
