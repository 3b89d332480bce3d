"""The Python API: the user's own nn.Module, Dataset and loss; plug-ins by import and by module:Name; a new process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import kdlab
from kdlab.cli import main
from kdlab.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
COMMON = {"epochs": 1, "device": "cpu", "progress": False, "precision": "fp32"}


@pytest.fixture(scope="module")
def teacher_run(fmnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    return kdlab.train("cnn_tiny", {"name": "fashion_mnist", "root": str(fmnist), "batch_size": 32}, out_dir=str(out),
                       **COMMON)


STUDENT_MODULE = '''
import torch
from torch import nn


class Student(nn.Module):
    """A user's two-branch net: no stage_names, no num_classes argument."""

    def __init__(self):
        super().__init__()
        self.left = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.right = nn.Sequential(nn.Conv2d(1, 4, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(torch.cat([self.left(x), self.right(x)], 1).flatten(1))


if __name__ == "__main__":
    import sys
    import kdlab

    run = kdlab.distill(student=Student(), teacher=sys.argv[1], method="kd",
                        data={"name": "fashion_mnist", "root": sys.argv[2], "batch_size": 32},
                        epochs=1, out_dir=sys.argv[3], name="student", device="cpu", progress=False)
    print(run.metrics["test_top1"])
'''


def _kdlab(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "kdlab", *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_own_student_from_a_script_then_eval_in_a_new_process(tmp_path, fmnist, teacher_run):
    (tmp_path / "thatmodule.py").write_text(STUDENT_MODULE)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "KDLAB_NO_PROGRESS": "1"}
    script = subprocess.run([sys.executable, "thatmodule.py", str(teacher_run.run_dir), str(fmnist), "runs"],
                            capture_output=True, text=True, cwd=tmp_path, env=env)
    assert script.returncode == 0, script.stderr
    top1 = float(script.stdout.strip().splitlines()[-1])
    config = (tmp_path / "runs" / "student" / "config.yaml").read_text()
    assert "name: thatmodule:Student" in config  # the script's class, named after its file, not __main__
    evaluated = _kdlab("eval", "--import", "thatmodule", "runs/student", "device=cpu", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout.strip().splitlines()[-1])["test_top1"] == pytest.approx(top1, abs=1e-6)
    # the same student from the command line, by module:Name (the recorded imports find the module again)
    cli = _kdlab("distill", "--import", "thatmodule", "student=thatmodule:Student", f"teacher={teacher_run.run_dir}",
                 "method=kd", f"dataset.root={fmnist}", "dataset.batch_size=32", "epochs=1", "out_dir=cli",
                 "device=cpu", "progress=false", cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout.strip().splitlines()[-1])["test_top1"] >= 0


def test_own_student_in_an_experiment_file_and_a_changed_plugin_trains_again(tmp_path, fmnist, teacher_run):
    (tmp_path / "thatmodule.py").write_text(STUDENT_MODULE)
    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text(textwrap.dedent(f"""
        name: own
        out_dir: {tmp_path / 'exps'}
        imports: [thatmodule]
        dataset: {{name: fashion_mnist, root: {fmnist}, batch_size: 32}}
        seeds: [0]
        teachers: [{{name: cnn_tiny, checkpoint: {teacher_run.run_dir}}}]
        students: [{{name: "thatmodule:Student", label: mine}}]
        methods: [kd]
        student_schedule: {{epochs: 1}}
        device: cpu
        progress: false
    """))
    first = _kdlab("run", str(exp_file), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    runs = {p.name for p in (tmp_path / "exps" / "own" / "runs").iterdir()}
    assert len(runs) == 2  # baseline and kd
    again = _kdlab("run", str(exp_file), cwd=tmp_path)
    assert again.returncode == 0 and "training" not in again.stderr
    manifest = json.loads((tmp_path / "exps" / "own" / "manifest.json").read_text())
    assert "thatmodule" in manifest["imports"]
    # editing the plug-in's source re-keys its runs: they train again instead of serving stale results
    (tmp_path / "thatmodule.py").write_text(STUDENT_MODULE.replace("nn.Conv2d(1, 4, 3", "nn.Conv2d(1, 4, 1"))
    edited = _kdlab("run", str(exp_file), cwd=tmp_path)
    assert edited.returncode == 0, edited.stderr
    assert {p.name for p in (tmp_path / "exps" / "own" / "runs").iterdir()} > runs


@pytest.mark.parametrize("args, fragment", [
    (["--import", "no_such_module_xyz", "model=cnn_tiny"], "cannot import plug-in module 'no_such_module_xyz'"),
    (["model=no_such_module_xyz:Net"], "cannot import plug-in module 'no_such_module_xyz'"),
    (["model=broken_plugin:Net"], "plug-in module 'broken_plugin' failed to import: ZeroDivisionError"),
    (["model=good_plugin:Nope"], "module 'good_plugin' has no attribute 'Nope'"),
    (["model=good_plugin:NOT_A_MODEL"], "is not a class or function"),
])
def test_bad_imports_and_paths_are_one_line_errors(args, fragment, tmp_path, fmnist, capsys, monkeypatch):
    (tmp_path / "broken_plugin.py").write_text("x = 1 / 0\n")
    (tmp_path / "good_plugin.py").write_text("NOT_A_MODEL = 3\n")
    monkeypatch.chdir(tmp_path)
    assert main(["train", *args, f"dataset.root={fmnist}", f"out_dir={tmp_path}", "device=cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1 and "Traceback" not in err


class Noisy(Dataset):
    """A user Dataset: float images it normalized itself, a random flip of its own, targets attribute."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.targets = torch.arange(n) % 4
        self.patterns = torch.randn(4, 1, 12, 12, generator=torch.Generator().manual_seed(0))
        self.noise = 0.5 * torch.randn(n, 1, 12, 12, generator=g)
        self.classes = ["a", "b", "c", "d"]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        image = self.patterns[self.targets[i]] + self.noise[i]
        if torch.rand(()) < 0.5:  # the Dataset's own augmentation, from torch's RNG
            image = image.flip(-1)
        return image, int(self.targets[i])


def _tiny_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4))


def test_own_dataset_trains_distills_and_loads(tmp_path):
    data = (Noisy(96, 1), Noisy(32, 2))
    settings = {**COMMON, "epochs": 2, "out_dir": str(tmp_path), "dataset": {"batch_size": 16, "workers": 0}}
    teacher = kdlab.train(_tiny_cnn(), data, name="teacher", **settings)
    assert teacher.metrics["test_top1"] > 25 and teacher.metrics["epochs"] == 2
    assert len(teacher.history) == 2 and {"train_loss", "val_top1"} <= set(teacher.history[0])
    assert list(teacher.history_df["epoch"]) == [1, 2]
    assert isinstance(teacher.model, nn.Module) and teacher.run_dir.is_dir()
    again = kdlab.train(_tiny_cnn(), data, name="teacher", **settings)  # train-or-load: loaded, same numbers
    assert again.metrics == teacher.metrics
    torch.testing.assert_close(again.model[0].weight, teacher.model[0].weight)
    student = kdlab.distill(_tiny_cnn(), teacher, method={"name": "kd", "T": 2}, data=data, name="student",
                            **settings)
    assert 0 <= student.metrics["test_top1"] <= 100
    assert kdlab.evaluate(student)["test_top1"] == pytest.approx(student.metrics["test_top1"])
    # a DataLoader lends its dataset, batch size and collate function
    loaders = (DataLoader(Noisy(96, 1), batch_size=24), DataLoader(Noisy(32, 2), batch_size=24))
    via_loaders = kdlab.train(_tiny_cnn(), loaders, name="loaders", **settings)
    assert via_loaders.history[0]["lr"] > 0 and len(via_loaders.history) == 2


def my_loss(student_logits, teacher_logits, labels):
    return (student_logits.softmax(1) - teacher_logits.softmax(1)).pow(2).sum(1).mean()


def test_a_loss_function_and_a_method_class_as_methods(tmp_path):
    data = (Noisy(64, 1), Noisy(16, 2))
    settings = {**COMMON, "out_dir": str(tmp_path), "dataset": {"batch_size": 16, "workers": 0}}
    teacher = kdlab.train(_tiny_cnn(), data, name="t", **settings)
    run = kdlab.distill(_tiny_cnn(), teacher.model, method=my_loss, data=data, name="fn", **settings)
    assert "train_loss_my_loss" in run.history[0]
    from kdlab.methods.kd import KD

    run = kdlab.distill(_tiny_cnn(), teacher, method={"name": KD, "T": 3}, data=data, name="cls", **settings)
    assert "train_loss_kd" in run.history[0]


def test_feature_methods_on_a_model_without_stage_names(tmp_path):
    data = (Noisy(64, 1), Noisy(16, 2))
    settings = {**COMMON, "out_dir": str(tmp_path), "dataset": {"batch_size": 16, "workers": 0}}
    teacher = kdlab.train(_tiny_cnn(), data, name="t", **settings)
    with pytest.raises(ConfigError, match=r"method.student_layers.*declares no stage_names.*=\[layer3\]"):
        kdlab.distill(_tiny_cnn(), teacher, method="fitnets", data=data, name="f1", **settings)
    run = kdlab.distill(_tiny_cnn(), teacher, data=data, name="f2", **settings,
                        method={"name": "fitnets", "student_layers": ["2"], "teacher_layers": ["2"]})
    assert "train_loss_hint" in run.history[0]


def test_adam_channels_and_pad(tmp_path, fmnist):
    run = kdlab.train("cnn_tiny", {"name": "fashion_mnist", "root": str(fmnist), "batch_size": 32, "channels": 3,
                                   "pad": 2}, optim={"name": "adam", "lr": 1e-3}, out_dir=str(tmp_path), **COMMON)
    meta = json.loads((run.run_dir / "meta.json").read_text())
    assert run.model.block1[0][0].in_channels == 3 and meta["data_fingerprint"]
    from kdlab.data import load_splits, make_loader
    from kdlab.config import DataConfig

    cfg = DataConfig(root=str(fmnist), channels=3, pad=2)
    splits = load_splits(cfg)
    batch = next(iter(make_loader(splits.train, splits.info, cfg, train=True, device=torch.device("cpu"))))
    assert batch.images.shape[1:] == (3, 32, 32) and torch.equal(batch.images[:, 0], batch.images[:, 2])
    border = batch.images[0, 0, 0, 0]  # a padded pixel: the normalized value of a zero pixel
    assert border == pytest.approx(-splits.info.mean[0] / splits.info.std[0], abs=1e-5)
    assert kdlab.evaluate(run.run_dir)["test_top1"] == pytest.approx(run.metrics["test_top1"])


def test_import_prints_nothing_and_is_cheap():
    out = subprocess.run([sys.executable, "-c", "import sys, kdlab; print(sorted(m for m in sys.modules "
                          "if m.startswith('torch'))[:1]); print(kdlab.__version__)"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert out.returncode == 0 and out.stderr == "" and out.stdout.splitlines() == ["[]", kdlab.__version__]


def test_experiment_with_python_objects_runs_and_reports(tmp_path, caplog):
    data = {"data": (Noisy(64, 1), Noisy(32, 2)), "batch_size": 16, "workers": 0}
    exp = kdlab.Experiment(name="objects", out_dir=str(tmp_path), dataset=data,
                           teachers=[{"model": _tiny_cnn(), "label": "big"}], students=[_tiny_cnn()],
                           methods=["kd", "dist", my_loss], seeds=[0, 1], device="cpu", progress=False,
                           precision="fp32", teacher_schedule={"epochs": 1}, student_schedule={"epochs": 1})
    with caplog.at_level("INFO", logger="kdlab"):
        summary = exp.run()
    assert summary["runs"] == 1 + 2 * 4  # teacher, then per seed: baseline, kd, dist, my_loss
    assert "teacher outputs are not shared" in caplog.text  # a Dataset's views are its own
    report = exp.report()
    labels = {row["label"] for row in report.rows}
    assert {"big (teacher)", "Sequential (baseline)", "my_loss: big → Sequential"} <= labels
    html = report._repr_html_()
    assert html.count("<table") >= 2 and "data:image/png;base64," in html
    assert exp.run()["runs"] == summary["runs"]  # everything loads the second time
